//! A minimal HTTP/1.1 GET client for the processor's HTTP API (`rtcrm campaign state`), so the
//! command line needs no HTTP library: plain `http://` only (the API binds to loopback by
//! default; reads need no token), one request per connection (`Connection: close`), bodies by
//! `Content-Length`, chunked, or to the end of the connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--api `{url}`: {reason}; give the processor's HTTP address, e.g. http://127.0.0.1:8080")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the processor's HTTP API at {addr}: {source}; is `rtcrm run` or `rtcrm dev` listening there? Give its --http-addr with --api http://HOST:PORT")]
    Connect { addr: String, source: std::io::Error },
    #[error("reading the answer of {url}: {reason}")]
    Read { url: String, reason: String },
}

/// `http://host[:port][/prefix]` split into the address to connect to, the `Host` header and
/// the path prefix.
fn split_url(base: &str) -> Result<(String, String, String), ClientError> {
    let bad = |reason: &str| ClientError::BadUrl { url: base.to_owned(), reason: reason.to_owned() };
    let rest = match base.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err(bad("https is not supported: the API serves plain HTTP (put it behind your proxy, or give its http:// address)")),
        Some((scheme, _)) => return Err(bad(&format!("the scheme `{scheme}` is not http"))),
        None => base,
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority.ends_with(']') && authority[i + 1..].chars().all(|c| c.is_ascii_digit()) && i + 1 < authority.len(),
        None => false,
    };
    let addr = if has_port { authority.to_owned() } else { format!("{authority}:80") };
    Ok((addr, authority.to_owned(), prefix.to_owned()))
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved characters).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET base + path`, waiting at most `timeout` for each step.
pub fn get(base: &str, path: &str, timeout: Duration) -> Result<Reply, ClientError> {
    let (addr, host, prefix) = split_url(base)?;
    let url = format!("http://{host}{prefix}{path}");
    let connect_err = |source: std::io::Error| ClientError::Connect { addr: addr.clone(), source };
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the host name has no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or_else(|| connect_err(last))?;
    let read_err = |reason: String| ClientError::Read { url: url.clone(), reason };
    stream.set_read_timeout(Some(timeout)).and_then(|_| stream.set_write_timeout(Some(timeout))).map_err(|e| read_err(e.to_string()))?;
    let request = format!("GET {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: rtcrm/{}\r\n\r\n", env!("CARGO_PKG_VERSION"));
    stream.write_all(request.as_bytes()).map_err(|e| read_err(e.to_string()))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| read_err(e.to_string()))?;
    parse_reply(&raw).map_err(read_err)
}

/// An HTTP/1.1 answer's status and body.
fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the answer has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: `{status_line}`"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or_else(|| format!("the body ended after {} of {n} bytes", rest.len()))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply { status, body })
}

/// A chunked body, decoded.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or("a chunk size line is cut short")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk size is not text")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| format!("bad chunk size `{size_text}`"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("a chunk is cut short")?);
        rest = rest.get(size + 2..).ok_or("a chunk is cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_prefix() {
        let ok = |u: &str| split_url(u).unwrap();
        assert_eq!(ok("http://127.0.0.1:8080"), ("127.0.0.1:8080".into(), "127.0.0.1:8080".into(), "".into()));
        assert_eq!(ok("http://localhost:9000/"), ("localhost:9000".into(), "localhost:9000".into(), "".into()));
        assert_eq!(ok("127.0.0.1:8080"), ("127.0.0.1:8080".into(), "127.0.0.1:8080".into(), "".into()));
        assert_eq!(ok("http://rtcrm.internal/crm/"), ("rtcrm.internal:80".into(), "rtcrm.internal".into(), "/crm".into()));
        assert_eq!(ok("http://[::1]:8080"), ("[::1]:8080".into(), "[::1]:8080".into(), "".into()));
        for (bad, why) in [("https://x:1", "https is not supported"), ("ftp://x", "scheme `ftp`"), ("http://", "no host")] {
            let e = split_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(segment("p 1/ä"), "p%201%2F%C3%A4");
        assert_eq!(segment("12345-a_b.c~"), "12345-a_b.c~");
    }

    #[test]
    fn answers_by_length_chunked_or_to_the_end() {
        let r = parse_reply(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!(r, Reply { status: 404, body: b"{}".to_vec() });
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert_eq!(parse_reply(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap().body, b"all of it");
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").unwrap_err().contains("5 of 10"));
        assert!(parse_reply(b"garbage").is_err());
    }

    #[test]
    fn a_closed_port_is_named_in_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = get(&format!("http://127.0.0.1:{port}"), "/api", Duration::from_secs(2)).unwrap_err().to_string();
        assert!(e.contains(&format!("cannot reach the processor's HTTP API at 127.0.0.1:{port}")), "{e}");
    }
}
