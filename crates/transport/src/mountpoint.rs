//! `mountpoint`: the listener's topic prefix, with `${clientid}` and `${username}` replaced per client.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountpointError {
    /// A value put into the mountpoint holds a wildcard: `+` or `#` in a topic prefix would let one client
    /// subscribe across other clients' mounts (a username `+` with mountpoint `${username}/`).
    #[error("{placeholder} {value:?} cannot be put in a mountpoint: it contains a wildcard ('+' or '#')")]
    Wildcard { placeholder: &'static str, value: String },
}

/// Replaces `${clientid}` and `${username}` in `template`, in one pass (a value that itself contains
/// `${...}` is not expanded again). An unset username leaves `${username}` as written, as EMQX does with any
/// placeholder it has no value for; other placeholders are kept as written too.
pub fn expand_mountpoint(template: &str, clientid: &str, username: Option<&str>) -> Result<String, MountpointError> {
    let mut out = String::with_capacity(template.len() + clientid.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find('}') else {
            out.push_str(tail);
            return Ok(out);
        };
        let name = &tail[2..end];
        let value = match name {
            "clientid" => Some(("${clientid}", clientid)),
            "username" => username.map(|u| ("${username}", u)),
            _ => None,
        };
        match value {
            Some((placeholder, v)) => {
                if v.contains(['+', '#']) {
                    return Err(MountpointError::Wildcard { placeholder, value: v.to_string() });
                }
                out.push_str(v);
            }
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_once() {
        assert_eq!(expand_mountpoint("", "c1", None).unwrap(), "");
        assert_eq!(expand_mountpoint("tenant/", "c1", None).unwrap(), "tenant/");
        assert_eq!(expand_mountpoint("${clientid}/", "c1", None).unwrap(), "c1/");
        assert_eq!(expand_mountpoint("u/${username}/c/${clientid}/", "c1", Some("bob")).unwrap(), "u/bob/c/c1/");
        assert_eq!(expand_mountpoint("x${clientid}y${clientid}", "a", None).unwrap(), "xaya");
        assert_eq!(expand_mountpoint("${clientid}/", "${username}", Some("bob")).unwrap(), "${username}/");
    }

    #[test]
    fn unknown_or_unset_placeholders_stay() {
        assert_eq!(expand_mountpoint("${username}/", "c1", None).unwrap(), "${username}/");
        assert_eq!(expand_mountpoint("${zone}/${clientid}", "c1", None).unwrap(), "${zone}/c1");
        assert_eq!(expand_mountpoint("a/${clientid", "c1", None).unwrap(), "a/${clientid");
    }

    #[test]
    fn wildcards_in_values_are_refused() {
        let e = expand_mountpoint("${username}/", "c1", Some("+")).unwrap_err();
        assert_eq!(e, MountpointError::Wildcard { placeholder: "${username}", value: "+".into() });
        assert!(expand_mountpoint("${clientid}/", "a#", None).is_err());
        assert!(expand_mountpoint("fixed/", "a#", None).is_ok(), "only values put in the mountpoint count");
    }
}
