//! The metrics endpoint's HTTP server: just enough HTTP/1.1 to answer a scraper, built so
//! that no client can make it hold more than a fixed amount of memory and threads, or for
//! long. One thread accepts; `WORKERS` threads answer, one request per connection
//! (`Connection: close`); at most `QUEUED` accepted connections wait for a worker, and one
//! past that is told 503 and closed. A request's head must arrive whole within
//! `HEAD_DEADLINE` (in total, not per read: a client trickling a byte a second is cut off
//! too) and fit in `MAX_HEAD` bytes; the answer must be taken within `WRITE_TIMEOUT`.
//!
//! Requests are parsed by `httparse`. tiny_http, the usual small synchronous server, does
//! none of these bounds: it reads header lines of any length, sets no timeouts, and starts
//! a thread for every connection.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Threads answering requests.
const WORKERS: usize = 2;
/// Accepted connections waiting for a worker.
const QUEUED: usize = 8;
/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;
/// Headers in a request head, at most.
const MAX_HEADERS: usize = 32;
/// Time for a client to send its whole request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time for a client to take each part of the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker's stack: rendering the metrics needs little.
const STACK: usize = 256 * 1024;

/// A request, as much of it as the handler needs.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For 405: the methods allowed.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: None,
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Starts answering connections to `listener` with `handler`, on threads of their own that
/// live as long as the process.
pub fn serve(listener: TcpListener, handler: Handler) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<TcpStream>(QUEUED);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let (rx, handler) = (Arc::clone(&rx), Arc::clone(&handler));
        std::thread::Builder::new()
            .name(format!("portwatch-metrics-{i}"))
            .stack_size(STACK)
            .spawn(move || work(&rx, &*handler))?;
    }
    std::thread::Builder::new()
        .name("portwatch-metrics".into())
        .stack_size(STACK)
        .spawn(move || accept(&listener, &tx))?;
    Ok(())
}

fn accept(listener: &TcpListener, queue: &SyncSender<TcpStream>) {
    let mut failures = 0u32;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                failures = 0;
                match queue.try_send(stream) {
                    Ok(()) => {}
                    Err(TrySendError::Full(stream)) => turn_away(stream),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: say so once in a while, and do
                // not spin on an error that persists.
                if failures.is_power_of_two() {
                    log::warn!("metrics endpoint: accepting a connection failed: {e}");
                }
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers 503 without waiting for the request: what has arrived of it is read (without
/// blocking) so that closing does not reset the connection before the answer is read.
fn turn_away(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 1024];
    for _ in 0..(MAX_HEAD / sink.len()) {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.set_nonblocking(false);
    let _ = write_response(&mut stream, &Response::text(503, "busy: try again\n"), false);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn work(queue: &Mutex<Receiver<TcpStream>>, handler: &(dyn Fn(&Request) -> Response + Sync)) {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(mut stream) = next else { return };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let (response, head_only) = match read_request(&mut stream) {
            Ok(Some(request)) => (handler(&request), request.method == "HEAD"),
            Ok(None) => continue, // the client went away, or its time ran out
            Err(refusal) => (refusal, false),
        };
        let _ = write_response(&mut stream, &response, head_only);
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads one request head: `Ok(None)` when the client closed or ran out of time, `Err` with
/// the answer for one that cannot be served.
fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, Response> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Ok(None);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("/");
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                let accept = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("accept"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                return Ok(Some(Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: path.to_owned(),
                    accept,
                }));
            }
            Ok(httparse::Status::Partial) if len == MAX_HEAD => {
                return Err(Response::text(431, "request head too large\n"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Response::text(431, "too many headers\n"));
            }
            Err(_) => return Err(Response::text(400, "bad request\n")),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response, head_only: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}
