//! HTTP for the master's tests: a minimal HTTP/1.1 client over a real TCP socket (so a test
//! sees the exact status line, headers and bytes the master sends), an API client holding
//! the key, a request that reports a dead master as `None` (the crash tests), and an SSE
//! reader that de-chunks the event stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    if n == 0 {
        return None;
    }
    Some(buf)
}

/// Sends one request (`Connection: close`) and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the master");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
        // No body follows, whatever Content-Length says.
    } else if chunked {
        while let Some(c) = read_chunk(&mut r) {
            body.extend_from_slice(&c);
        }
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body).unwrap();
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// A client holding the API key.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub base: String,
    pub key: String,
}

impl Api {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        request(
            self.addr,
            method,
            &format!("{}{}", self.base, path),
            &[("X-API-Key", &self.key)],
            body.map(str::as_bytes),
        )
    }
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }
    pub fn instance(&self, id: &str) -> serde_json::Value {
        let r = self.get(&format!("/instances/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
    /// Polls an instance until `pred` holds (or panics after `secs`).
    pub fn wait_instance(
        &self,
        id: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.instance(id);
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("instance {id} never reached: {what}; last: {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An open SSE stream.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
    /// Everything received so far, de-chunked.
    pub raw: Vec<u8>,
    closed: bool,
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: serde_json::Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.data["instance"]["id"].as_str().unwrap_or("")
    }
}

impl Sse {
    pub fn open(addr: SocketAddr, path: &str, key: &str) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect to the master");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader);
        Sse {
            status,
            headers,
            reader,
            pending: Vec::new(),
            raw: Vec::new(),
            closed: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads the next frame (`retry:` frames are skipped); None when the stream ended.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.pending.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&frame[..pos]).into_owned());
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no SSE frame within {timeout:?}; pending: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match read_chunk(&mut self.reader) {
                Some(c) => {
                    self.raw.extend_from_slice(&c);
                    self.pending.extend_from_slice(&c);
                }
                None => self.closed = true,
            }
        }
    }

    /// Reads the next `event: instance` event.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            let frame = self.next_frame(timeout)?;
            if frame.starts_with("retry:") {
                continue;
            }
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {frame:?}"));
            return Some(Event { name, data });
        }
    }

    /// Reads events until one matches (panics after `timeout`).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left.max(Duration::from_millis(1))) {
                Some(e) if pred(&e) => return e,
                Some(_) => continue,
                None => panic!("SSE stream ended before the expected event"),
            }
        }
    }

    /// True once the server closed the stream (reads until then).
    pub fn ends(&mut self, timeout: Duration) -> bool {
        while let Some(_f) = self.next_frame(timeout) {}
        true
    }
}

/// One API request; `None` when the master is not there or died before answering.
pub fn try_call(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         X-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    // A response cut short by the kill is no answer.
    match length {
        Some(n) if rest.len() < n => None,
        _ => Some((status, rest.to_string())),
    }
}
