//! The built-in web server over real sockets: content negotiation, redirects, content types,
//! caching headers, conditional and range requests, HEAD, logs, methods and the refusals that
//! keep it inside its root. The tree is written here, the way the index writer lays it out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use piwheels_master::web_server::WebServer;
use piwheels_testsupport::data::random_bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tempfile::TempDir;

const WHEEL: &str = "foo-0.1-cp311-cp311-linux_armv7l.whl";
const WHEEL_V6: &str = "foo-0.1-cp311-cp311-linux_armv6l.whl";
/// Larger than the server's read chunk, so that it is streamed in several pieces.
const WHEEL_SIZE: usize = 300_000;
const SIMPLE_ROOT_HTML: &str = "<!DOCTYPE html><html><body><a href=\"foo/\">foo</a></body></html>\n";
const SIMPLE_ROOT_JSON: &str = "{\"meta\":{\"api-version\":\"1.1\"},\"projects\":[{\"name\":\"foo\"}]}\n";
const FOO_HTML: &str = "<!DOCTYPE html><html><body><a href=\"foo-0.1-cp311-cp311-linux_armv7l.whl\">x</a></body></html>\n";
const FOO_JSON: &str = "{\"meta\":{\"api-version\":\"1.1\"},\"name\":\"foo\",\"versions\":[],\"files\":[]}\n";
const LOG_TEXT: &str = "Building wheel for foo (pyproject.toml) ... done\n";

const JSON: &str = "application/vnd.pypi.simple.v1+json";
const VND_HTML: &str = "application/vnd.pypi.simple.v1+html";
const TEXT_HTML: &str = "text/html; charset=utf-8";
const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
const UV_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// A served tree, the server, and a client that does not follow redirects.
struct Site {
    dir: TempDir,
    server: WebServer,
    client: reqwest::Client,
}

impl Site {
    fn start() -> Site {
        piwheels_master::pypi::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path());
        let server = WebServer::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Site { dir, server, client }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.local_addr())
    }

    fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(path)).unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::GET, path, headers).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        Answer { status, headers, body }
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// The tree the index writer keeps, in small.
fn write_tree(root: &Path) {
    write(root, "index.html", b"<!DOCTYPE html><html><body>home</body></html>\n");
    write(root, "404.html", b"<!DOCTYPE html><html><body>no such page</body></html>\n");
    write(root, "packages.json", b"[[\"foo\",1,2]]");
    write(root, "styles.css", b"body {}\n");
    write(root, "simple/index.html", SIMPLE_ROOT_HTML.as_bytes());
    write(root, "simple/index.json", SIMPLE_ROOT_JSON.as_bytes());
    write(root, "simple/foo/index.html", FOO_HTML.as_bytes());
    write(root, "simple/foo/index.json", FOO_JSON.as_bytes());
    write(root, &format!("simple/foo/{WHEEL}"), &random_bytes(WHEEL_SIZE, 1));
    write(root, &format!("simple/foo/{WHEEL}.metadata"), b"Metadata-Version: 2.1\nName: foo\nVersion: 0.1\n");
    // The armv6l twin is a link to the armv7l file, as the farm publishes it.
    std::os::unix::fs::symlink(WHEEL, root.join(format!("simple/foo/{WHEEL_V6}"))).unwrap();
    write(root, "simple/foo/.tmp-upload", b"half a page");
    write(root, "simple/rpi-gpio/index.html", b"<!DOCTYPE html><html><body></body></html>\n");
    std::fs::create_dir_all(root.join("simple/nofiles")).unwrap();
    write(root, "project/foo/index.html", b"<!DOCTYPE html><html><body>foo</body></html>\n");
    write(root, "project/foo/json/index.json", b"{\"package\":\"foo\"}");
    write(root, "logs/0000/0000/0001.txt.gz", &gzip(LOG_TEXT));
    // Links that lead out of the tree.
    std::os::unix::fs::symlink("/etc", root.join("simple/etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("simple/foo/passwd.whl")).unwrap();
}

/// Sends `request` as it is (no client tidies the path) and returns the status and the head.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = answer.split("\r\n\r\n").next().unwrap_or("").to_string();
    (status, head)
}

fn raw_get(addr: SocketAddr, path: &str) -> u16 {
    raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).0
}

#[tokio::test]
async fn simple_pages_negotiate_on_accept_q_values() {
    let site = Site::start();
    // (Accept header, expected content type; None for 406)
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (None, Some(TEXT_HTML)),
        (Some("*/*"), Some(TEXT_HTML)),
        (Some("text/html"), Some(TEXT_HTML)),
        (Some("text/*"), Some(TEXT_HTML)),
        (Some(PIP_ACCEPT), Some(JSON)),
        (Some(UV_ACCEPT), Some(JSON)),
        (Some(JSON), Some(JSON)),
        (Some(VND_HTML), Some(VND_HTML)),
        (Some("application/vnd.pypi.simple.latest+json"), Some(JSON)),
        (Some("application/vnd.pypi.simple.latest+html"), Some(VND_HTML)),
        // Qualities decide, not the order.
        (Some("application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.9"), Some(TEXT_HTML)),
        (Some("text/html;q=0.2, application/vnd.pypi.simple.v1+html;q=0.3"), Some(VND_HTML)),
        (Some("text/html;q=0.5, application/vnd.pypi.simple.v1+json;q=0.5"), Some(JSON)),
        // q=0 means "not this", even when a wildcard would admit it.
        (Some("application/vnd.pypi.simple.v1+json;q=0, text/html"), Some(TEXT_HTML)),
        (Some("application/vnd.pypi.simple.v1+json;q=0, */*"), Some(TEXT_HTML)),
        (Some("application/vnd.pypi.simple.v1+json; q=0"), None),
        (Some("application/json"), None),
        (Some("image/png, text/plain;q=0.5"), None),
        (Some("text/html;q=0"), None),
        // A malformed range is skipped, not fatal.
        (Some("text/html;q=2, application/vnd.pypi.simple.v1+json"), Some(JSON)),
    ];
    for path in ["/simple/", "/simple/foo/"] {
        let (html, json) = if path == "/simple/" { (SIMPLE_ROOT_HTML, SIMPLE_ROOT_JSON) } else { (FOO_HTML, FOO_JSON) };
        for (accept, expected) in cases {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let answer = site.get(path, &headers).await;
            assert_eq!(answer.header("vary"), "Accept", "{path} {accept:?}");
            match expected {
                None => assert_eq!(answer.status, StatusCode::NOT_ACCEPTABLE, "{path} {accept:?}"),
                Some(content_type) => {
                    assert_eq!(answer.status, StatusCode::OK, "{path} {accept:?}");
                    assert_eq!(answer.header("content-type"), *content_type, "{path} {accept:?}");
                    let body = if *content_type == JSON { json } else { html };
                    assert_eq!(answer.text(), body, "{path} {accept:?}");
                    assert_eq!(answer.header("cache-control"), "public, max-age=60");
                }
            }
        }
    }
}

#[tokio::test]
async fn format_query_overrides_accept() {
    let site = Site::start();
    let answer = site.get("/simple/foo/?format=application/vnd.pypi.simple.v1%2Bjson", &[("accept", "text/html")]).await;
    assert_eq!(answer.header("content-type"), JSON);
    assert_eq!(answer.text(), FOO_JSON);
    let answer = site.get("/simple/?format=text/html", &[("accept", JSON)]).await;
    assert_eq!(answer.header("content-type"), TEXT_HTML);
}

#[tokio::test]
async fn each_form_of_a_page_has_its_own_entity_tag() {
    let site = Site::start();
    let json = site.get("/simple/foo/", &[("accept", JSON)]).await;
    let vnd = site.get("/simple/foo/", &[("accept", VND_HTML)]).await;
    let html = site.get("/simple/foo/", &[("accept", "text/html")]).await;
    let tags = [json.header("etag"), vnd.header("etag"), html.header("etag")];
    assert!(tags.iter().all(|t| t.starts_with('"') && t.ends_with('"')), "{tags:?}");
    assert_ne!(tags[0], tags[1]);
    assert_ne!(tags[0], tags[2]);
    assert_ne!(tags[1], tags[2]);
    // Revalidating the JSON form with its tag gives 304, with Vary still there.
    let again = site.get("/simple/foo/", &[("accept", PIP_ACCEPT), ("if-none-match", tags[0])]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.header("vary"), "Accept");
    assert_eq!(again.header("etag"), tags[0]);
    assert!(again.body.is_empty());
    // The HTML form's tag does not validate the JSON form.
    let other = site.get("/simple/foo/", &[("accept", PIP_ACCEPT), ("if-none-match", tags[2])]).await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn directories_without_the_slash_are_redirected() {
    let site = Site::start();
    for (path, location) in [
        ("/simple", "/simple/"),
        ("/simple/foo", "/simple/foo/"),
        ("/project/foo", "/project/foo/"),
        ("/project/foo/json", "/project/foo/json/"),
        ("/logs", "/logs/"),
        ("/simple/foo?x=1", "/simple/foo/?x=1"),
    ] {
        let answer = site.get(path, &[]).await;
        assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY, "{path}");
        assert_eq!(answer.header("location"), location, "{path}");
    }
}

#[tokio::test]
async fn project_names_are_redirected_to_their_canonical_form() {
    let site = Site::start();
    for (path, location) in [
        ("/simple/Foo/", "/simple/foo/"),
        ("/simple/FOO", "/simple/foo/"),
        ("/simple/RPi.GPIO/", "/simple/rpi-gpio/"),
        ("/simple/rpi_gpio", "/simple/rpi-gpio/"),
        ("/simple/rpi--._gpio/", "/simple/rpi-gpio/"),
        (&format!("/simple/Foo/{WHEEL}"), &format!("/simple/foo/{WHEEL}")),
        ("/project/Foo/", "/project/foo/"),
        ("/project/Foo/json/", "/project/foo/json/"),
        ("/simple/Foo/?format=text/html", "/simple/foo/?format=text/html"),
    ] {
        let answer = site.get(path, &[]).await;
        assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY, "{path}");
        assert_eq!(answer.header("location"), location, "{path}");
    }
    // Files that sit where a project name would are served as they are named.
    assert_eq!(site.get("/simple/index.html", &[]).await.text(), SIMPLE_ROOT_HTML);
    let json = site.get("/simple/index.json", &[]).await;
    assert_eq!(json.header("content-type"), JSON);
    assert_eq!(json.text(), SIMPLE_ROOT_JSON);
}

#[tokio::test]
async fn a_client_that_follows_redirects_lands_on_the_project() {
    let site = Site::start();
    let client = reqwest::Client::new();
    let response = client.get(site.url("/simple/FOO")).header("accept", PIP_ACCEPT).send().await.unwrap();
    assert_eq!(response.url().path(), "/simple/foo/");
    assert_eq!(response.text().await.unwrap(), FOO_JSON);
}

#[tokio::test]
async fn missing_projects_and_listings_are_404() {
    let site = Site::start();
    for path in ["/simple/nothing/", "/simple/nothing", "/simple/nofiles/", "/logs/", "/logs/0000/", "/project/", "/nope.html"] {
        let answer = site.get(path, &[("accept", PIP_ACCEPT)]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        // The site's own 404 page, not the directory's contents.
        assert!(answer.text().contains("no such page"), "{path}: {}", answer.text());
    }
    // A file asked for as a directory is not there either.
    assert_eq!(site.get("/index.html/", &[]).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn files_have_exact_types_and_cache_lifetimes() {
    let site = Site::start();
    // A wheel's signed statement (one line of JSON) and the master's public key.
    std::fs::write(site.dir.path().join("simple/foo").join(format!("{WHEEL}.intoto.jsonl")), "{}\n").unwrap();
    std::fs::write(site.dir.path().join("signing-key.pem"), "-----BEGIN PUBLIC KEY-----\n").unwrap();
    let immutable = "public, max-age=31536000, immutable";
    for (path, content_type, cache) in [
        ("/", TEXT_HTML, "public, max-age=60"),
        ("/index.html", TEXT_HTML, "public, max-age=60"),
        ("/packages.json", "application/json", "public, max-age=60"),
        ("/styles.css", "text/css; charset=utf-8", "public, max-age=60"),
        ("/project/foo/", TEXT_HTML, "public, max-age=60"),
        ("/project/foo/json/", "application/json", "public, max-age=60"),
        ("/project/foo/json/index.json", "application/json", "public, max-age=60"),
        (&format!("/simple/foo/{WHEEL}"), "application/octet-stream", immutable),
        (&format!("/simple/foo/{WHEEL}.metadata"), "text/plain; charset=utf-8", immutable),
        (&format!("/simple/foo/{WHEEL}.intoto.jsonl"), "application/json", "public, max-age=60"),
        ("/signing-key.pem", "text/plain; charset=utf-8", "public, max-age=60"),
    ] {
        let answer = site.get(path, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.header("content-type"), content_type, "{path}");
        assert_eq!(answer.header("cache-control"), cache, "{path}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(answer.header("content-encoding"), "", "{path}");
    }
}

#[tokio::test]
async fn wheels_are_sent_whole_with_validators() {
    let site = Site::start();
    let wheel = site.file(&format!("simple/foo/{WHEEL}"));
    let answer = site.get(&format!("/simple/foo/{WHEEL}"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, wheel);
    assert_eq!(answer.header("content-length"), WHEEL_SIZE.to_string());
    assert_eq!(answer.header("accept-ranges"), "bytes");
    assert_eq!(answer.header("content-encoding"), "");
    assert!(answer.header("etag").starts_with('"'));
    let modified = std::fs::metadata(site.dir.path().join("simple/foo").join(WHEEL)).unwrap().modified().unwrap();
    let expected = chrono::DateTime::<chrono::Utc>::from(modified).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    assert_eq!(answer.header("last-modified"), expected);
    // The armv6l link inside the tree is followed.
    let twin = site.get(&format!("/simple/foo/{WHEEL_V6}"), &[]).await;
    assert_eq!(twin.status, StatusCode::OK);
    assert_eq!(twin.body, wheel);
}

#[tokio::test]
async fn conditional_requests_answer_304() {
    let site = Site::start();
    let path = format!("/simple/foo/{WHEEL}");
    let first = site.get(&path, &[]).await;
    let etag = first.header("etag").to_string();
    let last_modified = first.header("last-modified").to_string();

    let cases: &[(&[(&str, &str)], StatusCode)] = &[
        (&[("if-none-match", &etag)], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", &format!("W/{etag}"))], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", &format!("\"other\", {etag}"))], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", "*")], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", "\"other\"")], StatusCode::OK),
        (&[("if-modified-since", &last_modified)], StatusCode::NOT_MODIFIED),
        (&[("if-modified-since", "Sun, 06 Nov 2101 08:49:37 GMT")], StatusCode::NOT_MODIFIED),
        (&[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")], StatusCode::OK),
        // The obsolete forms a recipient must read too (RFC 9110, 5.6.7).
        (&[("if-modified-since", "Sunday, 06-Nov-01 08:49:37 GMT")], StatusCode::OK),
        (&[("if-modified-since", "Sun Nov  6 08:49:37 2101")], StatusCode::NOT_MODIFIED),
        (&[("if-modified-since", "yesterday")], StatusCode::OK),
        // If-None-Match decides when both are sent.
        (&[("if-none-match", "\"other\""), ("if-modified-since", &last_modified)], StatusCode::OK),
    ];
    for (headers, status) in cases {
        let answer = site.get(&path, headers).await;
        assert_eq!(answer.status, *status, "{headers:?}");
        if *status == StatusCode::NOT_MODIFIED {
            assert!(answer.body.is_empty());
            assert_eq!(answer.header("etag"), etag);
            assert_eq!(answer.header("cache-control"), "public, max-age=31536000, immutable");
        } else {
            assert_eq!(answer.body.len(), WHEEL_SIZE);
        }
    }
}

#[tokio::test]
async fn head_gives_the_headers_without_the_body() {
    let site = Site::start();
    for path in [format!("/simple/foo/{WHEEL}"), "/simple/foo/".into(), "/index.html".into()] {
        let get = site.get(&path, &[("accept", PIP_ACCEPT)]).await;
        let head = site.send(reqwest::Method::HEAD, &path, &[("accept", PIP_ACCEPT)]).await;
        assert_eq!(head.status, StatusCode::OK, "{path}");
        assert!(head.body.is_empty(), "{path}");
        for name in ["content-type", "content-length", "etag", "last-modified", "cache-control", "vary", "accept-ranges"] {
            assert_eq!(head.header(name), get.header(name), "{path} {name}");
        }
        assert_eq!(head.header("content-length"), get.body.len().to_string(), "{path}");
    }
    let missing = site.send(reqwest::Method::HEAD, "/simple/nothing/", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn byte_ranges_give_206_and_416() {
    let site = Site::start();
    let path = format!("/simple/foo/{WHEEL}");
    let wheel = site.file(&format!("simple/foo/{WHEEL}"));
    let len = wheel.len();
    let etag = site.get(&path, &[]).await.header("etag").to_string();

    for (range, start, end) in [
        ("bytes=0-99".to_string(), 0, 99),
        ("bytes=100-".to_string(), 100, len - 1),
        ("bytes=-65536".to_string(), len - 65536, len - 1),
        (format!("bytes=-{}", len + 10), 0, len - 1),
        (format!("bytes=1000-{}", len + 5000), 1000, len - 1),
        (format!("bytes={}-{}", len - 1, len - 1), len - 1, len - 1),
    ] {
        let answer = site.get(&path, &[("range", &range)]).await;
        assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(answer.header("content-range"), format!("bytes {start}-{end}/{len}"), "{range}");
        assert_eq!(answer.header("content-length"), (end - start + 1).to_string(), "{range}");
        assert_eq!(answer.body, wheel[start..=end], "{range}");
    }
    for range in [format!("bytes={len}-"), format!("bytes={}-{}", len + 1, len + 9), "bytes=-0".into()] {
        let answer = site.get(&path, &[("range", &range)]).await;
        assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(answer.header("content-range"), format!("bytes */{len}"), "{range}");
    }
    // Several ranges, other units and nonsense get the whole file.
    for range in ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=a-b", "bytes"] {
        let answer = site.get(&path, &[("range", range)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{range}");
        assert_eq!(answer.body.len(), len, "{range}");
    }
    // If-Range: the range only if the file is still the one the client has part of.
    let resumed = site.get(&path, &[("range", "bytes=1000-"), ("if-range", &etag)]).await;
    assert_eq!(resumed.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resumed.body, wheel[1000..]);
    let changed = site.get(&path, &[("range", "bytes=1000-"), ("if-range", "\"another\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body, wheel);
    let last_modified = resumed.header("last-modified").to_string();
    let by_date = site.get(&path, &[("range", "bytes=0-9"), ("if-range", &last_modified)]).await;
    assert_eq!(by_date.status, StatusCode::PARTIAL_CONTENT);
    // A HEAD with a range describes the part.
    let head = site.send(reqwest::Method::HEAD, &path, &[("range", "bytes=0-9")]).await;
    assert_eq!(head.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(head.header("content-length"), "10");
}

#[tokio::test]
async fn logs_are_sent_gzipped_or_decompressed_as_the_client_accepts() {
    let site = Site::start();
    let path = "/logs/0000/0000/0001.txt.gz";
    let stored = site.file("logs/0000/0000/0001.txt.gz");

    let gzipped = site.get(path, &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(gzipped.status, StatusCode::OK);
    assert_eq!(gzipped.header("content-encoding"), "gzip");
    assert_eq!(gzipped.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(gzipped.header("vary"), "Accept-Encoding");
    assert_eq!(gzipped.body, stored);

    for accept_encoding in [None, Some("identity"), Some("gzip;q=0, deflate"), Some("br")] {
        let headers: Vec<(&str, &str)> = accept_encoding.iter().map(|a| ("accept-encoding", *a)).collect();
        let plain = site.get(path, &headers).await;
        assert_eq!(plain.status, StatusCode::OK, "{accept_encoding:?}");
        assert_eq!(plain.header("content-encoding"), "", "{accept_encoding:?}");
        assert_eq!(plain.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(plain.header("vary"), "Accept-Encoding");
        assert_eq!(plain.text(), LOG_TEXT, "{accept_encoding:?}");
        assert_ne!(plain.header("etag"), gzipped.header("etag"));
    }
}

#[tokio::test]
async fn a_large_log_is_decompressed_in_pieces() {
    let site = Site::start();
    let text: String = (0..200_000).map(|n| format!("line {n}\n")).collect();
    write(site.dir.path(), "logs/0000/0000/0002.txt.gz", &gzip(&text));
    let plain = site.get("/logs/0000/0000/0002.txt.gz", &[]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.text(), text);
}

#[tokio::test]
async fn only_get_and_head_are_allowed() {
    let site = Site::start();
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = site.send(method.clone(), "/simple/foo/", &[]).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.header("allow"), "GET, HEAD", "{method}");
    }
}

#[tokio::test]
async fn paths_cannot_leave_the_root() {
    let site = Site::start();
    let addr = site.server.local_addr();
    for (path, status) in [
        ("/../../../../etc/passwd", 400),
        ("/simple/../../etc/passwd", 400),
        ("/simple/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/simple/..%2f..%2fetc%2fpasswd", 400),
        ("/simple%2f..%2f..%2fetc%2fpasswd", 400),
        ("/simple/foo%2findex.html", 400),
        ("/simple/foo%5c..%5c..%5cindex.html", 400),
        ("/simple/./foo/", 400),
        ("/simple//foo/", 400),
        ("/index.html%00.txt", 400),
        ("/simple/%ff/", 400),
        ("/simple/%zz/", 400),
        // Links out of the tree look like nothing at all.
        ("/simple/etc/passwd", 404),
        ("/simple/etc/", 404),
        ("/simple/foo/passwd.whl", 404),
        // Hidden files (the index writer's temporary ones) are never served.
        ("/simple/foo/.tmp-upload", 404),
        ("/.git/config", 404),
    ] {
        assert_eq!(raw_get(addr, path), status, "{path}");
    }
    // The ordinary path still works through the same raw client.
    assert_eq!(raw_get(addr, "/simple/foo/"), 200);
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let site = Site::start();
    let big = "x".repeat(20_000);
    let request = format!("GET /simple/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(site.server.local_addr(), request.as_bytes()).0, 431);
    let many: String = (0..100).map(|n| format!("X-H{n}: v\r\n")).collect();
    let request = format!("GET /simple/ HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw(site.server.local_addr(), request.as_bytes()).0, 431);
}

#[tokio::test]
async fn pages_replaced_on_disk_are_served_at_once() {
    let site = Site::start();
    let before = site.get("/simple/foo/", &[]).await;
    let replacement = "<!DOCTYPE html><html><body>new</body></html>\n";
    let tmp = site.dir.path().join("simple/foo/.tmp-page");
    std::fs::write(&tmp, replacement).unwrap();
    std::fs::rename(&tmp, site.dir.path().join("simple/foo/index.html")).unwrap();
    let after = site.get("/simple/foo/", &[]).await;
    assert_eq!(after.text(), replacement);
    assert_ne!(after.header("etag"), before.header("etag"));
}

#[test]
fn starting_fails_on_a_busy_address_or_a_missing_root() {
    let dir = tempfile::tempdir().unwrap();
    let first = WebServer::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let busy = WebServer::start(dir.path().to_path_buf(), first.local_addr());
    assert!(busy.is_err());
    let missing = WebServer::start(dir.path().join("nope"), "127.0.0.1:0".parse().unwrap());
    assert!(missing.is_err());
}

#[test]
fn stopping_closes_the_listener_and_frees_the_port() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "index.html", b"home");
    let server = WebServer::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    assert_eq!(raw_get(addr, "/"), 200);
    // A kept-alive idle connection does not hold the stop up: it is closed as idle, not cut
    // when the grace runs out.
    let mut idle = TcpStream::connect(addr).unwrap();
    assert_eq!(server.stop(), 0, "connections cut");
    assert!(TcpStream::connect(addr).is_err());
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut byte = [0u8; 1];
    match idle.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle connection was not closed: {other:?}"),
    }
    // The same address can be bound again.
    let again = WebServer::start(dir.path().to_path_buf(), addr).unwrap();
    assert_eq!(raw_get(again.local_addr(), "/"), 200);
}

#[test]
fn dropping_the_server_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = WebServer::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    drop(server);
    assert!(TcpStream::connect(addr).is_err());
}

/// The process's peak resident memory, in KiB (nextest runs each test in a process of its own).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_file_is_streamed_in_flat_memory() {
    const SIZE: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    // A sparse file: large, but quick to make and to read.
    let file = std::fs::File::create(dir.path().join("big-1.0-py3-none-any.whl")).unwrap();
    file.set_len(SIZE).unwrap();
    let server = WebServer::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let before = peak_rss_kib();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.write_all(b"GET /big-1.0-py3-none-any.whl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut received = 0u64;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    assert!(received > SIZE, "{received}");
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "serving {SIZE} bytes grew the peak memory by {grown} KiB");
}
