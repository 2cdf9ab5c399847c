//! HTTP against the example workers, and ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::wait::wait_for;

/// A port the kernel picked and released (for configs that need a fixed port).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

/// `GET path` returning the status line's code and the body (any status).
pub fn http_get_status(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

/// `GET path` over a new connection with `Connection: close`; the body of an
/// `HTTP/1.1 200` answer, anything else is an error.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {resp:?}")));
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The pid in a worker's `/` answer: `pid=<pid> index=<i> version=<tag>`.
pub fn pid_of_body(body: &str) -> Option<i32> {
    body.split_whitespace()
        .next()?
        .strip_prefix("pid=")?
        .parse()
        .ok()
}

/// Ask `addr` until `n` distinct worker pids have answered; the pids, sorted.
pub fn distinct_answering_pids(addr: &str, n: usize) -> Vec<i32> {
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        format!("{n} distinct workers to answer on {addr}"),
        Duration::from_secs(20),
        || {
            let body = http_get(addr, "/").ok()?;
            seen.insert(pid_of_body(&body)?);
            (seen.len() == n).then_some(())
        },
    );
    seen.into_iter().collect()
}
