//! A tokio current_thread echo server, TCP and UDP, written the way the
//! tokio documentation shows it: one task per connection, `io::copy` from
//! the read half to the write half. Used only as the benchmark's reference.
//!
//! Usage: reference-tokio-echo ADDR (e.g. 127.0.0.1:7100)

use std::net::SocketAddr;

use tokio::io;
use tokio::net::{TcpListener, UdpSocket};

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7100".to_string())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let listener = TcpListener::bind(addr).await?;
    let udp = UdpSocket::bind(addr).await?;
    eprintln!("listening on tcp {addr}");
    eprintln!("listening on udp {addr}");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], peer).await;
            }
        }
    });
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            let _ = io::copy(&mut reader, &mut writer).await;
        });
    }
}
