//! The built-in web server: serves the output tree the index writer keeps (the simple index,
//! project pages, wheels and their metadata, build logs) over HTTP/1.1, for small sites, the
//! quickstart and the tests. A large site serves the same tree with nginx or Apache instead;
//! `docs/web-server.md` describes both and `docs/nginx.conf` and `docs/apache.conf` behave the
//! same as this server.
//!
//! [`WebServer::start`] binds the socket (a binding error is returned to the caller), then
//! serves on its own thread with its own tokio runtime, so the synchronous master starts it
//! with one call; [`WebServer::stop`], or dropping it, stops it gracefully. Nothing is cached in
//! memory: every request looks at the file system, so a page the index writer renames into
//! place is served at once, and files are streamed in chunks, so memory stays flat however
//! large they are.
//!
//! What a request gets:
//! - `/simple/` and `/simple/<project>/` negotiate (PEP 691) between the directory's
//!   `index.json` and `index.html` on the `Accept` header's q-values (or `?format=`), answer
//!   with `Vary: Accept`, and 406 when nothing offered is acceptable;
//! - a project name that is not in PEP 503 canonical form, under `/simple/` or `/project/`, is
//!   redirected (301) to the canonical one, and a directory asked for without its trailing
//!   slash to the slash form; other directories serve their `index.html` (or `index.json`),
//!   never a listing;
//! - files get exact content types, `ETag` and `Last-Modified` (so `If-None-Match` and
//!   `If-Modified-Since` give 304), `HEAD`, and single byte ranges (206, or 416 when
//!   unsatisfiable; `If-Range` honoured); pages are cacheable for a minute, wheels and their
//!   `.metadata` for a year as immutable (a published file never changes);
//! - gzipped build logs (`*.txt.gz`) are sent as stored with `Content-Encoding: gzip` to a
//!   client that accepts gzip, and decompressed on the fly to one that does not.
//!
//! Safety: only `GET` and `HEAD` (405 with `Allow` otherwise); request heads are bounded in size
//! and in time; a path with `.` or `..` segments, an encoded slash, NUL or another control
//! character is refused (400), hidden names (the temporary files of the index writer and the
//! file juggler) are not served, and a symbolic link is followed only while it stays inside
//! the root.

use std::convert::Infallible;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use flate2::write::GzDecoder;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use piwheels_common::names::canonicalize;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The longest a client may take to send a request's head, and the longest a kept-alive
/// connection may sit idle: bounds what slow or silent clients hold.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) accepted; a larger one gets 431. pip
/// and uv send well under 1 KiB.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most header fields a request may have.
const MAX_HEADERS: usize = 64;
/// The most connections served at once; more clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// How long stopping waits for responses in flight before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Files up to this size are read in one go; larger ones are streamed in chunks of this size,
/// which is what a connection holds in memory at a time.
const CHUNK: usize = 128 * 1024;
/// Compressed bytes given to the log decompressor at a time: bounds the output one step can
/// make (deflate expands at most about 1,000 times).
const GUNZIP_STEP: usize = 4 * 1024;

/// Pages change as builds arrive: clients may reuse them for a minute (uv caches by these
/// headers; pip revalidates every time and gets a 304).
const PAGE_CACHE: &str = "public, max-age=60";
/// A published wheel and its `.metadata` never change (invariant 8 of the architecture).
const IMMUTABLE_CACHE: &str = "public, max-age=31536000, immutable";
/// A build log is written once; it only disappears with its version.
const LOG_CACHE: &str = "public, max-age=86400";

const WHEEL_TYPE: &str = "application/octet-stream";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";
const HTML_TYPE: &str = "text/html; charset=utf-8";
const ALLOWED_METHODS: &str = "GET, HEAD";

/// One answered request, as an access log sees it: what download statistics are made of.
#[derive(Debug, Clone)]
pub struct Access {
    /// When the answer was decided (its body may still be on its way).
    pub time: DateTime<Utc>,
    pub peer: SocketAddr,
    pub method: String,
    /// The path as requested (still percent-encoded), without the query.
    pub path: String,
    pub status: u16,
    /// The answer's `Content-Type`, if it has one.
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
}

/// Called with every answered request, on the server's threads: it must be quick (hand the
/// record to a channel, say).
type AccessLog = Arc<dyn Fn(&Access) + Send + Sync>;

/// The built-in HTTP server for the output tree. Stops when dropped.
#[derive(Debug)]
pub struct WebServer {
    local_addr: SocketAddr,
    /// Sending `true` (or dropping it) asks the server to stop.
    shutdown: Option<watch::Sender<bool>>,
    /// The thread running the server's runtime; joined on stop.
    thread: Option<JoinHandle<usize>>,
}

impl WebServer {
    /// Binds `listen` (port 0 picks a free port: see [`WebServer::local_addr`]) and serves the
    /// tree at `root`, which must exist, from a thread of its own. Errors (a missing root, an
    /// address in use) are returned, not logged.
    pub fn start(root: PathBuf, listen: SocketAddr) -> anyhow::Result<WebServer> {
        Self::start_inner(root, listen, None)
    }

    /// [`WebServer::start`], calling `log` with every answered request.
    pub fn start_with_access_log(
        root: PathBuf,
        listen: SocketAddr,
        log: impl Fn(&Access) + Send + Sync + 'static,
    ) -> anyhow::Result<WebServer> {
        Self::start_inner(root, listen, Some(Arc::new(log)))
    }

    fn start_inner(root: PathBuf, listen: SocketAddr, log: Option<AccessLog>) -> anyhow::Result<WebServer> {
        let root = std::fs::canonicalize(&root)
            .with_context(|| format!("web server root {}", root.display()))?;
        anyhow::ensure!(root.is_dir(), "web server root {} is not a directory", root.display());
        let listener =
            StdTcpListener::bind(listen).with_context(|| format!("binding the web server to {listen}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("web_server")
            .enable_all()
            .build()
            .context("starting the web server's runtime")?;
        let (shutdown, stop) = watch::channel(false);
        let site = Arc::new(Site { root, log });
        let thread = std::thread::Builder::new()
            .name("web_server".into())
            .spawn(move || {
                let cut = runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, site, stop).await,
                        Err(e) => {
                            tracing::error!("web server: {e}");
                            0
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
                cut
            })
            .context("starting the web server's thread")?;
        tracing::info!("web server listening on http://{local_addr}/");
        Ok(WebServer { local_addr, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, closes idle ones, lets responses in flight finish (for up
    /// to five seconds), and waits for the server's thread to end. Returns how many
    /// connections were still busy when that grace ran out and were cut.
    pub fn stop(mut self) -> usize {
        self.shut_down()
    }

    fn shut_down(&mut self) -> usize {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(cut)) => cut,
            Some(Err(_)) => {
                tracing::error!("the web server's thread panicked");
                0
            }
            None => 0,
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts connections until told to stop, then drains them. Returns how many were cut
/// because they were still busy when the grace ran out.
async fn serve(listener: tokio::net::TcpListener, site: Arc<Site>, mut stop: watch::Receiver<bool>) -> usize {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            permit = Arc::clone(&permits).acquire_owned() => {
                let Ok(permit) = permit else { break };
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            let site = Arc::clone(&site);
                            let stop = stop.clone();
                            connections.spawn(async move {
                                serve_connection(stream, peer, site, stop).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            // Out of file descriptors, most likely: wait rather than spin.
                            tracing::warn!("web server: accepting a connection: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let cut = connections.len();
    if drained.is_err() {
        tracing::warn!("web server: closing {cut} connections still busy");
        connections.shutdown().await;
    }
    tracing::info!("web server stopped");
    cut
}

/// Resolves when the server is asked to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    site: Arc<Site>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let site = Arc::clone(&site);
        async move { Ok::<_, Infallible>(site.respond(request, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("web server: connection from {peer}: {e}");
    }
}

/// What the server serves: the canonical path of the root, every served file checked to be
/// under it.
struct Site {
    root: PathBuf,
    log: Option<AccessLog>,
}

/// What a request asks, taken from the request so that the file-system work can run on the
/// blocking pool.
#[derive(Debug)]
struct Ask {
    head: bool,
    path: String,
    query: Option<String>,
    accept: Option<String>,
    accept_encoding: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    range: Option<String>,
    if_range: Option<String>,
}

/// A response's body as the blocking part decides it; [`Payload`] is what it becomes.
#[derive(Debug)]
enum Source {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes from the file's current position.
    File { file: File, len: u64 },
    /// The whole file, gunzipped on the way.
    Gunzip(File),
}

type Reply = Response<Source>;

impl Site {
    async fn respond(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Payload> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let reply = if method == Method::GET || method == Method::HEAD {
            let ask = Ask::from_request(&request);
            let site = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || site.plan(&ask)).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::error!("web server: answering {path}: {e}");
                    text_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            }
        } else {
            let mut reply = text_reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served\n");
            reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            reply
        };
        tracing::debug!("web server: {peer} {method} {path} {}", reply.status().as_u16());
        if let Some(log) = &self.log {
            let text = |name| reply.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_string);
            log(&Access {
                time: Utc::now(),
                peer,
                method: method.to_string(),
                path,
                status: reply.status().as_u16(),
                content_type: text(header::CONTENT_TYPE),
                user_agent: request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
            });
        }
        finish(reply, method == Method::HEAD)
    }

    /// Decides the whole answer to `ask`: everything but sending the body.
    fn plan(&self, ask: &Ask) -> Reply {
        let path = match RequestPath::parse(&ask.path) {
            Ok(path) => path,
            Err(PathError::Bad) => return text_reply(StatusCode::BAD_REQUEST, "bad path\n"),
            Err(PathError::Hidden) => return self.not_found(),
        };
        let segments = &path.segments;
        let fs_path = segments.iter().fold(self.root.clone(), |p, s| p.join(s));
        let found = self.locate(&fs_path);

        // A file is served as it is named, even where a project name is expected
        // (`/simple/index.html`); anything else under a project name that is not canonical is
        // redirected to the canonical name.
        let is_file = matches!(&found, Ok((_, meta)) if meta.is_file());
        if !is_file
            && segments.len() >= 2
            && matches!(segments[0].as_str(), "simple" | "project")
            && canonicalize(&segments[1]) != segments[1]
        {
            let mut canonical = segments.clone();
            canonical[1] = canonicalize(&segments[1]);
            let slash = path.trailing_slash || segments.len() == 2;
            return redirect(&join_path(&canonical, slash), ask.query.as_deref());
        }
        let (real, meta) = match found {
            Ok(found) => found,
            Err(e) => return self.io_error(&ask.path, e),
        };
        if meta.is_file() {
            if path.trailing_slash {
                return self.not_found();
            }
            let Some(name) = segments.last() else { return self.not_found() };
            return match File::open(&real) {
                Ok(file) => serve_file(ask, file, &meta, describe(segments, name, ask)),
                Err(e) => self.io_error(&ask.path, e),
            };
        }
        if !meta.is_dir() {
            return self.not_found();
        }
        if !path.trailing_slash {
            return redirect(&format!("{}/", ask.path), ask.query.as_deref());
        }
        let negotiated = segments.first().is_some_and(|s| s == "simple") && segments.len() <= 2;
        if negotiated { self.simple_index(ask, &real) } else { self.directory_index(ask, &real) }
    }

    /// `/simple/` or `/simple/<project>/`: the HTML or JSON form, as the client prefers.
    fn simple_index(&self, ask: &Ask, dir: &Path) -> Reply {
        let html = self.open_inside(&dir.join("index.html"));
        let json = self.open_inside(&dir.join("index.json"));
        let mut offered = Vec::new();
        if json.is_some() {
            offered.push(Flavour::Json);
        }
        if html.is_some() {
            offered.extend([Flavour::VndHtml, Flavour::TextHtml]);
        }
        if offered.is_empty() {
            return self.not_found();
        }
        let format = ask.query.as_deref().and_then(format_override);
        let accept = format.as_deref().or(ask.accept.as_deref());
        let Some(flavour) = negotiate(accept, &offered) else {
            let mut reply = text_reply(
                StatusCode::NOT_ACCEPTABLE,
                "this page is available as application/vnd.pypi.simple.v1+json, \
                 application/vnd.pypi.simple.v1+html and text/html\n",
            );
            reply.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
            return reply;
        };
        let chosen = if flavour == Flavour::Json { json } else { html };
        let Some((file, meta)) = chosen else { return self.not_found() };
        let representation = Representation {
            content_type: flavour.content_type(),
            cache: PAGE_CACHE,
            vary: Some("Accept"),
            etag_suffix: flavour.etag_suffix(),
            coding: Coding::Identity,
        };
        serve_file(ask, file, &meta, representation)
    }

    /// Any other directory: its `index.html`, or its `index.json`; never a listing.
    fn directory_index(&self, ask: &Ask, dir: &Path) -> Reply {
        for (name, content_type) in [("index.html", HTML_TYPE), ("index.json", "application/json")] {
            if let Some((file, meta)) = self.open_inside(&dir.join(name)) {
                let representation = Representation {
                    content_type,
                    cache: PAGE_CACHE,
                    vary: None,
                    etag_suffix: "",
                    coding: Coding::Identity,
                };
                return serve_file(ask, file, &meta, representation);
            }
        }
        self.not_found()
    }

    /// Resolves `path` (following symbolic links) and refuses what lies outside the root.
    fn locate(&self, path: &Path) -> io::Result<(PathBuf, Metadata)> {
        let real = std::fs::canonicalize(path)?;
        if !real.starts_with(&self.root) {
            tracing::warn!("web server: {} leads outside the root, to {}", path.display(), real.display());
            return Err(io::ErrorKind::NotFound.into());
        }
        let meta = std::fs::metadata(&real)?;
        Ok((real, meta))
    }

    /// The regular file at `path`, opened, if there is one inside the root.
    fn open_inside(&self, path: &Path) -> Option<(File, Metadata)> {
        let (real, meta) = self.locate(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        let file = File::open(real).ok()?;
        Some((file, meta))
    }

    fn io_error(&self, path: &str, e: io::Error) -> Reply {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => self.not_found(),
            io::ErrorKind::PermissionDenied => text_reply(StatusCode::FORBIDDEN, "forbidden\n"),
            _ => {
                tracing::warn!("web server: {path}: {e}");
                text_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    }

    /// 404, with the site's own `404.html` page when it has one.
    fn not_found(&self) -> Reply {
        let page = self
            .open_inside(&self.root.join("404.html"))
            .and_then(|(mut file, meta)| {
                let mut page = Vec::with_capacity(meta.len().try_into().unwrap_or(0));
                file.read_to_end(&mut page).ok().map(|_| page)
            });
        match page {
            Some(page) => {
                let mut reply = Response::new(Source::Bytes(page));
                *reply.status_mut() = StatusCode::NOT_FOUND;
                reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(HTML_TYPE));
                reply
            }
            None => text_reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Ask {
    fn from_request(request: &Request<Incoming>) -> Ask {
        let headers = request.headers();
        Ask {
            head: request.method() == Method::HEAD,
            path: request.uri().path().to_string(),
            query: request.uri().query().map(str::to_string),
            accept: joined(headers, header::ACCEPT),
            accept_encoding: joined(headers, header::ACCEPT_ENCODING),
            if_none_match: joined(headers, header::IF_NONE_MATCH),
            if_modified_since: single(headers, header::IF_MODIFIED_SINCE),
            range: single(headers, header::RANGE),
            if_range: single(headers, header::IF_RANGE),
        }
    }
}

/// A list-valued header's fields joined with commas (as HTTP defines them to combine).
fn joined(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// A single-valued header; ignored when repeated or not text.
fn single(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::to_string)
}

/// A request's path taken apart.
#[derive(Debug)]
struct RequestPath {
    /// The percent-decoded segments; none for `/`.
    segments: Vec<String>,
    trailing_slash: bool,
}

#[derive(Debug)]
enum PathError {
    /// Refused outright: `.` or `..`, an empty segment, an encoded slash, NUL or another
    /// control character, bad percent-encoding or UTF-8.
    Bad,
    /// A hidden name (starting with `.`): temporary files of the index writer and the file
    /// juggler, never served.
    Hidden,
}

impl RequestPath {
    fn parse(raw: &str) -> Result<RequestPath, PathError> {
        let rest = raw.strip_prefix('/').ok_or(PathError::Bad)?;
        if rest.is_empty() {
            return Ok(RequestPath { segments: Vec::new(), trailing_slash: true });
        }
        let trailing_slash = rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        let mut hidden = false;
        for raw_segment in rest.split('/') {
            let segment = percent_decode(raw_segment).ok_or(PathError::Bad)?;
            if segment.is_empty()
                || segment == "."
                || segment == ".."
                || segment.chars().any(|c| c == '/' || c == '\\' || c.is_control())
            {
                return Err(PathError::Bad);
            }
            hidden |= segment.starts_with('.');
            segments.push(segment);
        }
        if hidden {
            return Err(PathError::Hidden);
        }
        Ok(RequestPath { segments, trailing_slash })
    }
}

/// A path segment percent-decoded; None when an escape is malformed (the crate would keep it
/// as it is) or the bytes are not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let escapes_whole = raw.match_indices('%').all(|(i, _)| raw.get(i + 1..i + 3).is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    escapes_whole.then(|| decoded.into_owned())
}

/// What a path segment keeps unencoded (RFC 3986's `pchar`): letters, digits and
/// `-._~!$&'()*+,;=:@`.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// `/a/b/c` (with a trailing slash if `slash`), each segment percent-encoded where needed.
fn join_path(segments: &[String], slash: bool) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(segment, SEGMENT));
    }
    if slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// The value of `format=` in a query string, for people who want to see the JSON in a browser
/// (PEP 691 allows it; clients must not rely on it). A `+` stays a `+`.
fn format_override(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("format="))
        .and_then(percent_decode)
        .map(|format| format.replace(' ', "+"))
}

/// The forms of a simple-index page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Json,
    VndHtml,
    TextHtml,
}

impl Flavour {
    fn media_type(self) -> &'static str {
        match self {
            Flavour::Json => "application/vnd.pypi.simple.v1+json",
            Flavour::VndHtml => "application/vnd.pypi.simple.v1+html",
            Flavour::TextHtml => "text/html",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Flavour::Json => "application/vnd.pypi.simple.v1+json",
            Flavour::VndHtml => "application/vnd.pypi.simple.v1+html",
            Flavour::TextHtml => HTML_TYPE,
        }
    }

    /// Distinguishes the two HTML forms' entity tags, which come from the same file.
    fn etag_suffix(self) -> &'static str {
        match self {
            Flavour::VndHtml => "-v1html",
            Flavour::Json | Flavour::TextHtml => "",
        }
    }

    /// Breaks ties between equally acceptable forms. A form the client named outright goes by
    /// the PEP's preference (JSON, then the versioned HTML, then text/html); among forms only a
    /// wildcard admits, plain HTML comes first, since a client saying `*/*` may be a browser or
    /// an old pip that cannot read JSON.
    fn rank(self, specificity: u8) -> u8 {
        match (specificity, self) {
            (2, Flavour::Json) | (0 | 1, Flavour::TextHtml) => 3,
            (_, Flavour::VndHtml) => 2,
            _ => 1,
        }
    }
}

/// The form of a simple page to answer `accept` with among those `offered`; None when none is
/// acceptable. With no `Accept` at all, HTML.
fn negotiate(accept: Option<&str>, offered: &[Flavour]) -> Option<Flavour> {
    let ranges = accept.map(parse_accept).unwrap_or_default();
    if accept.is_none_or(|a| a.trim().is_empty()) {
        return [Flavour::TextHtml, Flavour::VndHtml, Flavour::Json].into_iter().find(|f| offered.contains(f));
    }
    offered
        .iter()
        .filter_map(|&flavour| {
            let (main, sub) = flavour.media_type().split_once('/')?;
            // The most specific range that matches decides the quality.
            let (specificity, q) = ranges
                .iter()
                .filter_map(|range| {
                    let specificity = if range.main == "*" && range.sub == "*" {
                        0
                    } else if range.main == main && range.sub == "*" {
                        1
                    } else if range.main == main && range.sub == sub {
                        2
                    } else {
                        return None;
                    };
                    Some((specificity, range.q))
                })
                .max_by_key(|&(specificity, _)| specificity)?;
            (q > 0).then_some((q, specificity, flavour.rank(specificity), flavour))
        })
        .max_by_key(|&(q, specificity, rank, _)| (q, specificity, rank))
        .map(|(_, _, _, flavour)| flavour)
}

/// One media range of an `Accept` header, lower case, its quality in thousandths.
#[derive(Debug)]
struct MediaRange {
    main: String,
    sub: String,
    q: u16,
}

/// The ranges of an `Accept` header; malformed ones are skipped. `latest` versions of the
/// simple API's types stand for `v1`, the only version served.
fn parse_accept(accept: &str) -> Vec<MediaRange> {
    accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let (main, sub) = media.split_once('/')?;
            if main.is_empty() || sub.is_empty() || (main == "*" && sub != "*") {
                return None;
            }
            let sub = match sub {
                "vnd.pypi.simple.latest+json" => "vnd.pypi.simple.v1+json",
                "vnd.pypi.simple.latest+html" => "vnd.pypi.simple.v1+html",
                sub => sub,
            };
            let mut q = 1000;
            for parameter in parts {
                let Some((name, value)) = parameter.split_once('=') else { continue };
                if name.trim().eq_ignore_ascii_case("q") {
                    q = parse_quality(value.trim())?;
                    break;
                }
            }
            Some(MediaRange { main: main.to_string(), sub: sub.to_string(), q })
        })
        .collect()
}

/// An HTTP quality value (`0`, `0.5`, `1.000`) in thousandths.
fn parse_quality(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(fraction),
        "1" if fraction == 0 => Some(1000),
        _ => None,
    }
}

/// Whether an `Accept-Encoding` header admits gzip. A client that sends none gets the log
/// decompressed: plain tools (curl, wget) send none and could not read the gzip.
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(accept_encoding) = accept_encoding else { return false };
    let mut gzip = None;
    let mut any = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1000), |(_, value)| parse_quality(value.trim()));
        let Some(q) = q else { continue };
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    gzip.or(any).is_some_and(|q| q > 0)
}

/// How a file's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    /// A gzipped file sent as it is, with `Content-Encoding: gzip`.
    Gzip,
    /// A gzipped file decompressed for a client that does not take gzip.
    Gunzip,
}

/// How a file is described to the client.
#[derive(Debug)]
struct Representation {
    content_type: &'static str,
    cache: &'static str,
    vary: Option<&'static str>,
    etag_suffix: &'static str,
    coding: Coding,
}

/// The representation of the file named `name` at `segments`.
fn describe(segments: &[String], name: &str, ask: &Ask) -> Representation {
    let plain = |content_type, cache| Representation {
        content_type,
        cache,
        vary: None,
        etag_suffix: "",
        coding: Coding::Identity,
    };
    if name.ends_with(".whl") {
        return plain(WHEEL_TYPE, IMMUTABLE_CACHE);
    }
    if name.ends_with(".whl.metadata") {
        return plain(TEXT_TYPE, IMMUTABLE_CACHE);
    }
    if name.ends_with(".txt.gz") {
        let gzip = accepts_gzip(ask.accept_encoding.as_deref());
        let under_logs = segments.first().is_some_and(|s| s == "logs");
        return Representation {
            content_type: TEXT_TYPE,
            cache: if under_logs { LOG_CACHE } else { PAGE_CACHE },
            vary: Some("Accept-Encoding"),
            etag_suffix: if gzip { "" } else { "-gunzip" },
            coding: if gzip { Coding::Gzip } else { Coding::Gunzip },
        };
    }
    if segments.first().is_some_and(|s| s == "simple") && name == "index.json" {
        return plain(Flavour::Json.content_type(), PAGE_CACHE);
    }
    plain(content_type_of(name), PAGE_CACHE)
}

/// The content type a file's extension implies.
fn content_type_of(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => HTML_TYPE,
        // A statement beside a wheel: one line of JSON.
        "json" | "jsonl" => "application/json",
        "txt" | "metadata" | "pem" => TEXT_TYPE,
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "xml" => "application/xml",
        "xsl" => "text/xsl",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/vnd.microsoft.icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The answer to `ask` with the file `file`: 304 when the client's copy is current, 206 or 416
/// for a range, otherwise 200.
fn serve_file(ask: &Ask, mut file: File, meta: &Metadata, rep: Representation) -> Reply {
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let etag = format!("\"{:x}-{:x}-{:x}{}\"", meta.ino(), mtime_nanos(modified), len, rep.etag_suffix);
    let last_modified = http_date(modified);

    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert(header::LAST_MODIFIED, header_value(&last_modified));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(rep.cache));
    if let Some(vary) = rep.vary {
        headers.insert(header::VARY, HeaderValue::from_static(vary));
    }
    if not_modified(ask, &etag, modified) {
        return with_headers(Response::new(Source::Empty), StatusCode::NOT_MODIFIED, headers);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(rep.content_type));
    if rep.coding == Coding::Gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if rep.coding == Coding::Gunzip {
        let source = if ask.head { Source::Empty } else { Source::Gunzip(file) };
        return with_headers(Response::new(source), StatusCode::OK, headers);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    let range = match (&ask.range, if_range_holds(ask, &etag, modified)) {
        (Some(range), true) => parse_range(range, len),
        _ => RangeAsk::Whole,
    };
    let (status, start, count) = match range {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part(start, end) => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes {start}-{end}/{len}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAsk::Unsatisfiable => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{len}")));
            headers.remove(header::CONTENT_TYPE);
            headers.remove(header::CONTENT_ENCODING);
            return with_headers(Response::new(Source::Empty), StatusCode::RANGE_NOT_SATISFIABLE, headers);
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    let source = if ask.head {
        Source::Empty
    } else {
        match read_part(&mut file, start, count) {
            Ok(Some(bytes)) => Source::Bytes(bytes),
            Ok(None) => Source::File { file, len: count },
            Err(e) => {
                tracing::warn!("web server: reading {}: {e}", ask.path);
                return text_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        }
    };
    with_headers(Response::new(source), status, headers)
}

/// Positions `file` at `start`, and reads the `count` bytes from there when they are few
/// enough to send in one piece.
fn read_part(file: &mut File, start: u64, count: u64) -> io::Result<Option<Vec<u8>>> {
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    match usize::try_from(count) {
        Ok(count) if count <= CHUNK => {
            let mut bytes = vec![0; count];
            file.read_exact(&mut bytes)?;
            Ok(Some(bytes))
        }
        _ => Ok(None),
    }
}

/// Whether the client's cached copy is current (RFC 9110 section 13.2.2: `If-None-Match` wins
/// over `If-Modified-Since`).
fn not_modified(ask: &Ask, etag: &str, modified: SystemTime) -> bool {
    if let Some(if_none_match) = &ask.if_none_match {
        let wanted = etag.trim_start_matches("W/");
        return if_none_match
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == wanted);
    }
    match ask.if_modified_since.as_deref().and_then(parse_http_date) {
        Some(since) => unix_seconds(modified) <= since,
        None => false,
    }
}

/// Whether a range request's `If-Range` condition (if any) holds: the entity tag must match
/// strongly, or the date must be the file's modification time.
fn if_range_holds(ask: &Ask, etag: &str, modified: SystemTime) -> bool {
    match ask.if_range.as_deref().map(str::trim) {
        None => true,
        Some(tag) if tag.starts_with('"') || tag.starts_with("W/") => tag == etag,
        Some(date) => parse_http_date(date) == Some(unix_seconds(modified)),
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable range: the whole file (several ranges, another unit and bad syntax all land
    /// here, as RFC 9110 allows).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    Unsatisfiable,
}

fn parse_range(range: &str, len: u64) -> RangeAsk {
    let Some((unit, spec)) = range.split_once('=') else { return RangeAsk::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(len.saturating_sub(n), len - 1),
            None => RangeAsk::Whole,
        },
        (first, "") => match number(first) {
            Some(start) if start >= len => RangeAsk::Unsatisfiable,
            Some(start) => RangeAsk::Part(start, len - 1),
            None => RangeAsk::Whole,
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= len {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part(start, end.min(len - 1))
                }
            }
            _ => RangeAsk::Whole,
        },
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs().try_into().unwrap_or(i64::MAX))
}

fn mtime_nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

/// Seconds since the epoch of an HTTP date in any of the three forms RFC 9110 asks a recipient
/// to read; None for anything else (which makes the condition it carries be ignored).
fn parse_http_date(date: &str) -> Option<i64> {
    httpdate::parse_http_date(date.trim()).ok().map(unix_seconds)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn with_headers(mut reply: Reply, status: StatusCode, headers: HeaderMap) -> Reply {
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    reply
}

fn text_reply(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(Source::Bytes(text.as_bytes().to_vec()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_TYPE));
    reply
}

fn redirect(location: &str, query: Option<&str>) -> Reply {
    let location = match query {
        Some(query) => format!("{location}?{query}"),
        None => location.to_string(),
    };
    let mut reply = text_reply(StatusCode::MOVED_PERMANENTLY, "moved\n");
    reply.headers_mut().insert(header::LOCATION, header_value(&location));
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(PAGE_CACHE));
    reply
}

/// Adds the headers every answer carries and turns the body into one hyper can send.
fn finish(reply: Reply, head: bool) -> Response<Payload> {
    let (mut parts, source) = reply.into_parts();
    parts.headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    parts.headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let payload = match source {
        Source::Bytes(bytes) if head => {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Payload::Empty
        }
        Source::Empty => Payload::Empty,
        Source::Bytes(bytes) => Payload::Bytes(Some(Bytes::from(bytes))),
        Source::File { file, len } => Payload::File(FileStream {
            file: tokio::fs::File::from_std(file),
            remaining: len,
            buf: Vec::new(),
        }),
        Source::Gunzip(file) => Payload::Gunzip(Box::new(GunzipStream {
            file: tokio::fs::File::from_std(file),
            decoder: GzDecoder::new(Vec::new()),
            input: vec![0; CHUNK / 4],
            filled: 0,
            fed: 0,
            eof: false,
        })),
    };
    Response::from_parts(parts, payload)
}

/// A response body: nothing, bytes in memory, or a file read (and perhaps gunzipped) chunk by
/// chunk as the client takes it.
#[derive(Debug)]
enum Payload {
    Empty,
    Bytes(Option<Bytes>),
    File(FileStream),
    Gunzip(Box<GunzipStream>),
}

#[derive(Debug)]
struct FileStream {
    file: tokio::fs::File,
    remaining: u64,
    /// The chunk being read; handed out as the frame when the read completes.
    buf: Vec<u8>,
}

#[derive(Debug)]
struct GunzipStream {
    file: tokio::fs::File,
    /// Holds the decompressed bytes not yet sent.
    decoder: GzDecoder<Vec<u8>>,
    /// The read buffer: `input[..filled]` was read, the decoder has had `input[..fed]`.
    input: Vec<u8>,
    filled: usize,
    fed: usize,
    eof: bool,
}

impl Body for Payload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            Payload::Empty => Poll::Ready(None),
            Payload::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Payload::File(stream) => stream.poll_chunk(cx),
            Payload::Gunzip(stream) => stream.poll_chunk(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Payload::Empty => true,
            Payload::Bytes(bytes) => bytes.is_none(),
            Payload::File(stream) => stream.remaining == 0,
            Payload::Gunzip(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Empty => SizeHint::with_exact(0),
            Payload::Bytes(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Payload::File(stream) => SizeHint::with_exact(stream.remaining),
            Payload::Gunzip(_) => SizeHint::default(),
        }
    }
}

impl FileStream {
    fn poll_chunk(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        if self.buf.len() != want {
            self.buf = vec![0; want];
        }
        let mut read = ReadBuf::new(&mut self.buf);
        if let Err(e) = ready!(Pin::new(&mut self.file).poll_read(cx, &mut read)) {
            return Poll::Ready(Some(Err(e)));
        }
        let n = read.filled().len();
        if n == 0 {
            // The file shrank under us: end the connection rather than send a short body.
            return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
        }
        let mut chunk = std::mem::take(&mut self.buf);
        chunk.truncate(n);
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

impl GunzipStream {
    fn poll_chunk(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let pending = self.decoder.get_ref().len();
            if pending >= CHUNK / 2 || (self.eof && pending > 0) {
                let out = std::mem::take(self.decoder.get_mut());
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            if self.eof {
                return Poll::Ready(None);
            }
            if self.fed < self.filled {
                let end = self.filled.min(self.fed + GUNZIP_STEP);
                match self.decoder.write(&self.input[self.fed..end]) {
                    // The gzip stream has ended: what follows is not part of it.
                    Ok(0) => self.eof = true,
                    Ok(n) => self.fed += n,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            // Everything read was decoded: read more (a read that is pending is polled
            // again with the same buffer).
            let mut read = ReadBuf::new(&mut self.input);
            if let Err(e) = ready!(Pin::new(&mut self.file).poll_read(cx, &mut read)) {
                return Poll::Ready(Some(Err(e)));
            }
            let n = read.filled().len();
            self.filled = n;
            self.fed = 0;
            if n == 0 {
                if let Err(e) = self.decoder.try_finish() {
                    return Poll::Ready(Some(Err(e)));
                }
                self.eof = true;
            }
        }
    }
}
