//! TLS over loopback: real rustls handshakes against `TlsContext`, with tokio-rustls as the client.

mod common;

use common::{write_leaf, Ca, Client, Leaf};
use halyard_core::config::{CommaList, PeerCertAs, SslOptions, TlsVersion, VerifyMode};
use halyard_transport::{accept_tls, ensure_default_certs, DefaultCerts, PeerCert, TlsContext, TransportError};
use md5::{Digest, Md5};
use rcgen::DnType;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(10);

/// What the server saw of one handshake.
#[derive(Debug)]
struct Accepted {
    version: Option<rustls::ProtocolVersion>,
    peer: Option<PeerCert>,
}

struct Pki {
    ca: Ca,
    server: Leaf,
    _dir: tempfile::TempDir,
    opts: SslOptions,
    defaults: DefaultCerts,
}

/// A server certificate from `ca`, written to a temporary directory, and `ssl_options` naming the files.
fn pki(verify: VerifyMode, fail_if_no_peer_cert: bool) -> Pki {
    let ca = Ca::new("Test CA");
    let server = ca.server("server-1");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_leaf(dir.path(), &server);
    let cacert = dir.path().join("ca.pem");
    std::fs::write(&cacert, &ca.pem).unwrap();
    let opts = SslOptions {
        certfile: Some(cert),
        keyfile: Some(key),
        cacertfile: Some(cacert),
        verify,
        fail_if_no_peer_cert,
        ..SslOptions::default()
    };
    let defaults = DefaultCerts::in_dir(Path::new("/nonexistent"));
    Pki { ca, server, _dir: dir, opts, defaults }
}

/// Serves handshakes: each accepted connection's outcome is sent back; good connections echo what they read.
async fn serve(ctx: Arc<TlsContext>) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Result<Accepted, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = ctx.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match accept_tls(&acceptor, tcp, T).await {
                    Ok(mut tls) => {
                        let conn = tls.get_ref().1;
                        let peer = PeerCert::from_connection(conn).unwrap();
                        let _ = tx.send(Ok(Accepted { version: conn.protocol_version(), peer }));
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn echo(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, msg: &[u8]) -> std::io::Result<()> {
    tls.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

#[tokio::test]
async fn tls12_only_and_tls13_only() {
    for (server_versions, good, bad) in [
        (vec![TlsVersion::Tlsv12], &rustls::version::TLS12, &rustls::version::TLS13),
        (vec![TlsVersion::Tlsv13], &rustls::version::TLS13, &rustls::version::TLS12),
    ] {
        let mut p = pki(VerifyMode::VerifyNone, false);
        p.opts.versions = server_versions.clone();
        let ctx = Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap());
        let (addr, mut seen) = serve(ctx).await;

        let mut tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
        let a = seen.recv().await.unwrap().unwrap();
        assert_eq!(a.version, Some(good.version), "{server_versions:?}");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(good.version));
        assert!(a.peer.is_none(), "verify_none asks for no certificate");
        echo(&mut tls, b"\x10\x00").await.unwrap();

        assert!(Client::trusting(&p.ca.cert).versions(&[bad]).connect(addr, "localhost").await.is_err());
        let e = seen.recv().await.unwrap().unwrap_err();
        assert!(e.contains("TLS handshake failed"), "{e}");
    }
}

#[tokio::test]
async fn configured_cipher_is_the_one_negotiated() {
    let mut p = pki(VerifyMode::VerifyNone, false);
    p.opts.versions = vec![TlsVersion::Tlsv12];
    p.opts.ciphers = CommaList(vec!["ECDHE-ECDSA-CHACHA20-POLY1305".into()]);
    let (addr, mut seen) = serve(Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap())).await;
    let tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    seen.recv().await.unwrap().unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
}

#[tokio::test]
async fn verify_peer_with_fail_if_no_peer_cert() {
    let p = pki(VerifyMode::VerifyPeer, true);
    let ctx = Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap());
    let (addr, mut seen) = serve(ctx).await;

    // No certificate: refused. (With TLS 1.3 the client may finish before the server's alert arrives, so the
    // server's verdict is what counts, and the client's first read fails.)
    let client = Client::trusting(&p.ca.cert).connect(addr, "localhost").await;
    let e = seen.recv().await.unwrap().unwrap_err();
    assert!(e.contains("TLS handshake failed"), "{e}");
    if let Ok(mut tls) = client {
        assert!(echo(&mut tls, b"x").await.is_err());
    }

    // A certificate from another CA: refused.
    let other = Ca::new("Other CA");
    let stranger = other.client(&[(DnType::CommonName, "stranger")]);
    let client = Client::trusting(&p.ca.cert).with_cert(&stranger).connect(addr, "localhost").await;
    let e = seen.recv().await.unwrap().unwrap_err();
    assert!(e.contains("TLS handshake failed"), "{e}");
    if let Ok(mut tls) = client {
        assert!(echo(&mut tls, b"x").await.is_err());
    }

    // A certificate from the configured CA: accepted, and its identity read.
    let good = p.ca.client(&[
        (DnType::CountryName, "SE"),
        (DnType::OrganizationName, "Acme"),
        (DnType::CommonName, "device-1"),
    ]);
    let mut tls = Client::trusting(&p.ca.cert).with_cert(&good).connect(addr, "localhost").await.unwrap();
    let a = seen.recv().await.unwrap().unwrap();
    echo(&mut tls, b"hello").await.unwrap();
    let peer = a.peer.expect("the client's certificate");
    assert_eq!(peer.cn(), Some("device-1"));
    assert_eq!(peer.dn(), "CN=device-1,O=Acme,C=SE");
    let md5: String = Md5::digest(&good.cert).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(peer.md5_hex(), md5);
    assert_eq!(peer.value(PeerCertAs::Md5), Some(md5.into_bytes()));
    assert_eq!(peer.value(PeerCertAs::Cn), Some(b"device-1".to_vec()));
    assert_eq!(peer.value(PeerCertAs::Crt).as_deref(), Some(&good.cert[..]));
}

#[tokio::test]
async fn verify_peer_alone_makes_the_certificate_optional_but_checked() {
    let p = pki(VerifyMode::VerifyPeer, false);
    let (addr, mut seen) = serve(Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap())).await;
    let mut tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    assert!(seen.recv().await.unwrap().unwrap().peer.is_none());
    echo(&mut tls, b"anonymous").await.unwrap();

    let stranger = Ca::new("Other CA").client(&[(DnType::CommonName, "stranger")]);
    let _ = Client::trusting(&p.ca.cert).with_cert(&stranger).connect(addr, "localhost").await;
    assert!(seen.recv().await.unwrap().is_err(), "a certificate sent is verified");
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_handshakes_only() {
    let p = pki(VerifyMode::VerifyNone, false);
    let ctx = Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap());
    let (addr, mut seen) = serve(ctx.clone()).await;
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let mut old_conn = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    seen.recv().await.unwrap().unwrap();
    assert_eq!(served(&old_conn), p.server.cert);

    // Unchanged files: nothing to reload.
    assert!(!ctx.reload_if_changed().unwrap());

    // A renewed certificate and key in the same files, picked up by an explicit reload.
    let renewed = p.ca.server("server-2");
    let dir = p.opts.certfile.as_ref().unwrap().parent().unwrap();
    write_leaf(dir, &renewed);
    ctx.reload().unwrap();
    let tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    seen.recv().await.unwrap().unwrap();
    assert_eq!(served(&tls), renewed.cert);
    // The connection made before the reload goes on as it was.
    echo(&mut old_conn, b"still here").await.unwrap();
    assert_eq!(served(&old_conn), p.server.cert);

    // A change noticed by the modification check (what `acceptor()` runs once a second).
    let third = p.ca.server("server-3");
    write_leaf(dir, &third);
    bump_mtime(p.opts.certfile.as_ref().unwrap());
    assert!(ctx.reload_if_changed().unwrap());
    let tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    seen.recv().await.unwrap().unwrap();
    assert_eq!(served(&tls), third.cert);

    // A broken file keeps the certificate in use.
    std::fs::write(p.opts.certfile.as_ref().unwrap(), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    assert!(ctx.reload().is_err());
    // A certificate whose key is another one's: refused too.
    std::fs::write(p.opts.certfile.as_ref().unwrap(), &renewed.cert_pem).unwrap();
    let e = ctx.reload().unwrap_err().to_string();
    assert!(e.contains("do not belong together"), "{e}");
    let tls = Client::trusting(&p.ca.cert).connect(addr, "localhost").await.unwrap();
    seen.recv().await.unwrap().unwrap();
    assert_eq!(served(&tls), third.cert);
}

/// Moves a file's modification time forward, so a change made within the clock's resolution is seen.
fn bump_mtime(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let m = f.metadata().unwrap().modified().unwrap();
    f.set_modified(m + Duration::from_secs(5)).unwrap();
}

#[tokio::test]
async fn reload_of_the_client_ca() {
    let p = pki(VerifyMode::VerifyPeer, true);
    let ctx = Arc::new(TlsContext::new(&p.opts, &p.defaults).unwrap());
    let (addr, mut seen) = serve(ctx.clone()).await;
    let other = Ca::new("Other CA");
    let client = other.client(&[(DnType::CommonName, "moved")]);
    let _ = Client::trusting(&p.ca.cert).with_cert(&client).connect(addr, "localhost").await;
    assert!(seen.recv().await.unwrap().is_err());

    std::fs::write(p.opts.cacertfile.as_ref().unwrap(), &other.pem).unwrap();
    ctx.reload().unwrap();
    let mut tls = Client::trusting(&p.ca.cert).with_cert(&client).connect(addr, "localhost").await.unwrap();
    let a = seen.recv().await.unwrap().unwrap();
    assert_eq!(a.peer.unwrap().cn(), Some("moved"));
    echo(&mut tls, b"ok").await.unwrap();

    std::fs::write(p.opts.cacertfile.as_ref().unwrap(), "garbage").unwrap();
    assert!(ctx.reload().is_err(), "a bad CA file is refused and the previous CA stays");
    let _tls = Client::trusting(&p.ca.cert).with_cert(&client).connect(addr, "localhost").await.unwrap();
    assert!(seen.recv().await.unwrap().is_ok());
}

#[tokio::test]
async fn generated_default_certificates_work_for_localhost_and_loopback_ips() {
    let data = tempfile::tempdir().unwrap();
    let defaults = ensure_default_certs(data.path()).unwrap();
    let ctx = Arc::new(TlsContext::new(&SslOptions::default(), &defaults).unwrap());
    let (addr, mut seen) = serve(ctx).await;
    let ca = rustls::pki_types::pem::PemObject::from_pem_file(&defaults.ca).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let mut tls = Client::trusting(&ca).connect(addr, name).await.unwrap();
        seen.recv().await.unwrap().unwrap();
        echo(&mut tls, name.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let p = pki(VerifyMode::VerifyNone, false);
    let ctx = TlsContext::new(&p.opts, &p.defaults).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let e = accept_tls(&ctx.acceptor(), tcp, Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(e, TransportError::Timeout { what: "TLS handshake", .. }), "{e}");
}

#[test]
fn bad_files_are_named_in_errors() {
    let mut p = pki(VerifyMode::VerifyNone, false);
    p.opts.keyfile = Some("/nonexistent/key.pem".into());
    let e = TlsContext::new(&p.opts, &p.defaults).unwrap_err().to_string();
    assert!(e.contains("keyfile") && e.contains("/nonexistent/key.pem"), "{e}");
    let mut p = pki(VerifyMode::VerifyNone, false);
    std::fs::write(p.opts.certfile.as_ref().unwrap(), "").unwrap();
    let e = TlsContext::new(&p.opts, &p.defaults).unwrap_err().to_string();
    assert!(e.contains("certfile") && e.contains("no CERTIFICATE"), "{e}");
    p.opts.ciphers = CommaList(vec!["RC4-MD5".into()]);
    let e = TlsContext::new(&p.opts, &p.defaults).unwrap_err().to_string();
    assert!(e.contains("RC4-MD5"), "{e}");
}
