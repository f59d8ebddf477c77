//! One raw MQTT client connection on our codec: set-up (TCP, CONNECT/CONNACK, SUBSCRIBE/SUBACK) with timeouts,
//! and the non-blocking read/write pumps the publisher and subscriber loops drive.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use halyard_codec::{
    Connect, Disconnect, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions, Utf8,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Smallest and largest read: buffers start small (19k idle connections must stay cheap) and double while reads
/// fill them, so a busy subscriber decodes hundreds of packets per read.
const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub addr: SocketAddr,
    /// Local source addresses, used round-robin by client index (empty: let the kernel choose).
    pub ifaddrs: Vec<IpAddr>,
    pub version: ProtocolVersion,
    pub clean: bool,
    pub session_expiry: Option<u32>,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bound on TCP connect + CONNACK, and on SUBACK.
    pub timeout: Duration,
    /// TCP_NODELAY on the socket.
    pub nodelay: bool,
    /// `--write each`: the hot loops write every packet with its own system call.
    pub write_each: bool,
}

pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum (v5 CONNACK); 65535 when it did not say.
    pub receive_maximum: u16,
    /// PINGREQ interval (the keepalive, or the v5 Server Keep Alive); zero = none.
    pub keepalive: Duration,
    /// `--write each` (see [`Conn::packet_done`]).
    pub write_each: bool,
    read_chunk: usize,
}

/// Opens TCP (from the client's source address, if any), sends CONNECT and waits for a successful CONNACK.
pub async fn connect(o: &ConnectOpts, index: usize, client_id: &str) -> Result<Conn> {
    match tokio::time::timeout(o.timeout, connect_inner(o, index, client_id)).await {
        Ok(r) => r,
        Err(_) => bail!("no CONNACK within {:?}", o.timeout),
    }
}

async fn open(o: &ConnectOpts, index: usize) -> Result<TcpStream> {
    let socket = if o.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.context("socket")?;
    if !o.ifaddrs.is_empty() {
        let ip = o.ifaddrs[index % o.ifaddrs.len()];
        {
            use std::os::fd::AsRawFd;
            crate::sys::bind_address_no_port(socket.as_raw_fd());
        }
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("bind to {ip}"))?;
    }
    let stream = socket.connect(o.addr).await.with_context(|| format!("TCP connect to {}", o.addr))?;
    stream.set_nodelay(o.nodelay).context("TCP_NODELAY")?;
    Ok(stream)
}

async fn connect_inner(o: &ConnectOpts, index: usize, client_id: &str) -> Result<Conn> {
    let stream = open(o, index).await?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        version: o.version,
        receive_maximum: u16::MAX,
        keepalive: Duration::from_secs(o.keepalive.into()),
        write_each: o.write_each,
        read_chunk: MIN_READ,
    };
    let mut properties = Properties::default();
    if o.version.is_v5() {
        properties.session_expiry_interval = o.session_expiry;
    }
    let c = Connect {
        protocol: o.version,
        clean_start: o.clean,
        keep_alive: o.keepalive,
        client_id: Utf8::from(client_id),
        will: None,
        username: o.username.as_deref().map(Utf8::from),
        password: o.password.as_ref().map(|p| p.clone().into_bytes().into()),
        properties: Box::new(properties).into(),
        bridge: false,
    };
    conn.send(&Packet::Connect(Box::new(c)))?;
    conn.flush_all().await?;
    match conn.recv().await? {
        Packet::ConnAck(a) if a.reason_code == 0 => {
            if let Some(rm) = a.properties.receive_maximum {
                conn.receive_maximum = rm;
            }
            if let Some(ka) = a.properties.server_keep_alive {
                conn.keepalive = Duration::from_secs(ka.into());
            }
            Ok(conn)
        }
        Packet::ConnAck(a) => bail!("CONNACK refused with code 0x{:02X}", a.reason_code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
}

impl Conn {
    /// Encodes `p` into the write buffer.
    pub fn send(&mut self, p: &Packet) -> Result<()> {
        halyard_codec::encode(p, self.version, &mut self.wbuf).map_err(|e| anyhow!("cannot encode {}: {e}", p.name()))
    }

    /// Writes the whole write buffer (set-up and close only; the hot loops use `try_flush`).
    pub async fn flush_all(&mut self) -> Result<()> {
        self.stream.write_all(&self.wbuf).await.context("write")?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next whole packet in the read buffer, if any.
    pub fn decode(&mut self) -> Result<Option<Packet>> {
        halyard_codec::decode(&mut self.rbuf, self.version, usize::MAX)
            .map_err(|e| anyhow!("cannot decode what the broker sent: {e}"))
    }

    /// Waits for the next packet (set-up only: callers bound it with a timeout).
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(p);
            }
            self.rbuf.reserve(MIN_READ);
            if self.stream.read_buf(&mut self.rbuf).await.context("read")? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// SUBSCRIBE to one filter and wait (bounded) for a SUBACK that grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, timeout: Duration) -> Result<()> {
        let s = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(Utf8::from(filter), SubscriptionOptions { qos, ..Default::default() })],
        };
        self.send(&Packet::Subscribe(s))?;
        self.flush_all().await?;
        let wait = async {
            loop {
                match self.recv().await? {
                    Packet::SubAck(a) if a.packet_id == 1 => {
                        return match a.reason_codes.first() {
                            Some(&rc) if rc < 0x80 => Ok(()),
                            Some(&rc) => Err(anyhow!("SUBACK refused {filter} with code 0x{rc:02X}")),
                            None => Err(anyhow!("SUBACK without reason codes")),
                        };
                    }
                    // Nothing else is expected before SUBACK; a leftover from an earlier session is ignored.
                    _ => continue,
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => bail!("no SUBACK for {filter} within {timeout:?}"),
        }
    }

    /// Writes as much of the write buffer as the socket takes without blocking.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Called by the hot loops after encoding one packet: with `--write each` it goes out now, in its own write
    /// system call (or with what is still queued, when the socket did not take everything before). True when
    /// nothing is left waiting in the write buffer.
    pub fn packet_done(&mut self) -> io::Result<bool> {
        if self.write_each {
            self.try_flush()?;
        }
        Ok(self.wbuf.is_empty())
    }

    /// Reads what the socket has without blocking: `Ok(true)` if bytes came, `Ok(false)` if none were ready,
    /// an error when the broker closed the connection.
    pub fn try_fill(&mut self) -> io::Result<bool> {
        self.rbuf.reserve(self.read_chunk);
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the broker closed the connection")),
            Ok(n) => {
                if n == room && self.read_chunk < MAX_READ {
                    self.read_chunk *= 2;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends DISCONNECT (best effort, one second at most) and drops the connection.
    pub async fn close(mut self) {
        let _ = self.send(&Packet::Disconnect(Disconnect::default()));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.flush_all().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}
