//! Access-log records: turning a web server's access-log line (the combined format) into an
//! [`AccessRecord`], and checking a record before it is stored. piw-logger parses with
//! [`parse_line`] and checks with [`validate`]; the master's log ingester (`lumberjack`) runs
//! [`validate`] again on everything it receives, because the sender is not trusted.
//!
//! What is recorded (every other line is an "other request", counted and dropped): a `GET`
//! answered `200` that carries a User-Agent, whose path is
//!
//! | path | User-Agent | record |
//! |---|---|---|
//! | `/simple/<pkg>/<file>.whl` | any | [`AccessRecord::Download`] |
//! | `/simple/<pkg>/` or `/simple/<pkg>/index.html` | an installer's (`pip/…`, `uv/…`) | [`AccessRecord::Search`] |
//! | `/project/<pkg>/` or `/project/<pkg>/index.html` | any | [`AccessRecord::ProjectPage`] |
//! | `/project/<pkg>/json/` or `/project/<pkg>/json/index.json` | any | [`AccessRecord::ProjectJson`] |
//! | `/` or `/index.html` (page `home`), `/<page>.html` | any | [`AccessRecord::Page`] |
//!
//! A `206` is part of a file (a resumed download, or an installer reading a wheel's metadata
//! through ranges), so it never counts as a download: the `200` that began the transfer did.
//! `.metadata` files, the simple index's root and a browser's look at a simple page are not
//! recorded.
//!
//! Installers describe their platform in a JSON object after their name
//! (`pip/24.0 {"cpu": "aarch64", ...}`); [`client_info`] takes the [`ClientInfo`] fields from
//! it, ignoring anything that is not a string. A line that is hostile or broken (too long, not
//! UTF-8, raw control characters, not the combined format, a bad time, a client that is not
//! an IP address, a path with `..` or encoded separators, an invalid name) is refused with the
//! [`Problem`], and every text field that is kept is cleaned of control characters and cut to
//! its column's length ([`limits`]).

pub mod logger;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead};
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use piwheels_common::names::canonicalize;
use piwheels_common::protocols::{AccessRecord, ClientInfo, Timestamp};
use piwheels_common::wheel::WheelName;
use serde_json::Value;

/// Column sizes of the access-log tables (`migrations/0001_initial.sql`), in characters.
pub mod limits {
    /// `downloads.filename`.
    pub const FILENAME: usize = 255;
    /// `searches.package`, `project_page_hits.package`, `project_json_downloads.package`.
    pub const PACKAGE: usize = 200;
    /// `web_page_hits.page`.
    pub const PAGE: usize = 30;
    /// `user_agent` of the page-hit tables.
    pub const USER_AGENT: usize = 200;
    /// Each [`ClientInfo`](piwheels_common::protocols::ClientInfo) field but the installer's
    /// name.
    pub const CLIENT_FIELD: usize = 100;
    /// `installer_name`.
    pub const INSTALLER_NAME: usize = 20;
}

/// Default longest line, in bytes. A web server's own limits (8 KiB for the request line and
/// for each header) keep real lines well below it.
pub const DEFAULT_MAX_LINE: usize = 32 << 10;

/// Earliest plausible access time, 2000-01-01 in seconds since 1970: anything before is a
/// broken clock or a forged line.
const EARLIEST: i64 = 946_684_800;
/// How far ahead of our clock an access time may be (clocks of two hosts differ a little).
const FUTURE_SLACK: TimeDelta = TimeDelta::hours(1);

/// Why a line, or a record, is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// The line is longer than the limit.
    TooLong,
    /// The line is not UTF-8.
    NotUtf8,
    /// The line holds raw control characters (web servers escape them).
    ControlCharacter,
    /// The line is not in the combined format.
    Malformed,
    /// The time is unreadable, or implausible (before 2000, or ahead of our clock).
    BadTime,
    /// The client's address is not an IP address.
    BadHost,
    /// The path is malformed or hostile (`..`, encoded separators, bad percent-encoding).
    BadPath,
    /// A package, file or page name is not valid.
    BadName,
}

impl Problem {
    /// Every problem, in the order summaries list them.
    pub const ALL: [Problem; 8] = [
        Problem::TooLong,
        Problem::NotUtf8,
        Problem::ControlCharacter,
        Problem::Malformed,
        Problem::BadTime,
        Problem::BadHost,
        Problem::BadPath,
        Problem::BadName,
    ];

    /// A few words for summaries and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::TooLong => "longer than the line limit",
            Problem::NotUtf8 => "not UTF-8",
            Problem::ControlCharacter => "raw control characters",
            Problem::Malformed => "not in the combined format",
            Problem::BadTime => "bad or implausible time",
            Problem::BadHost => "client is not an IP address",
            Problem::BadPath => "malformed or hostile path",
            Problem::BadName => "invalid package, file or page name",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The kinds of record, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`AccessRecord::Download`].
    Download,
    /// [`AccessRecord::Search`].
    Search,
    /// [`AccessRecord::ProjectPage`].
    ProjectPage,
    /// [`AccessRecord::ProjectJson`].
    ProjectJson,
    /// [`AccessRecord::Page`].
    Page,
}

impl Kind {
    /// Every kind, in the order summaries list them.
    pub const ALL: [Kind; 5] = [Kind::Download, Kind::Search, Kind::ProjectPage, Kind::ProjectJson, Kind::Page];

    /// The kind of a record.
    pub fn of(record: &AccessRecord) -> Kind {
        match record {
            AccessRecord::Download { .. } => Kind::Download,
            AccessRecord::Search { .. } => Kind::Search,
            AccessRecord::ProjectPage { .. } => Kind::ProjectPage,
            AccessRecord::ProjectJson { .. } => Kind::ProjectJson,
            AccessRecord::Page { .. } => Kind::Page,
        }
    }

    /// Its name in summaries (plural).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Download => "downloads",
            Kind::Search => "searches",
            Kind::ProjectPage => "project pages",
            Kind::ProjectJson => "project JSON",
            Kind::Page => "pages",
        }
    }
}

// ------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------

/// Parses one line of a combined-format access log (`%h %l %u %t "%r" %>s %b "%{Referer}i"
/// "%{User-Agent}i"`, optionally followed by more fields, which are ignored). `Ok(None)` is a
/// well-formed line that records nothing; the line may end in a line feed. The record still
/// needs [`validate`] (which checks the time against the clock, and cleans and cuts the text
/// fields).
pub fn parse_line(line: &[u8]) -> Result<Option<AccessRecord>, Problem> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| Problem::NotUtf8)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Problem::ControlCharacter);
    }
    let fields = Fields::split(line).ok_or(Problem::Malformed)?;
    let at = parse_time(fields.time)?;
    if fields.status != "200" {
        return Ok(None);
    }
    let request = unescape(fields.request);
    let mut parts = request.split(|&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return Err(Problem::Malformed) };
    if parts.next().is_some_and(|protocol| !protocol.starts_with(b"HTTP/")) || parts.next().is_some() {
        return Err(Problem::Malformed);
    }
    let agent = unescape(fields.user_agent);
    record_request(fields.host, at, method, target, 200, &String::from_utf8_lossy(&agent))
}

/// What one answered request records, whoever saw it: a line of an access log
/// ([`parse_line`]), or a web server as it answers (the built-in server's access hook gives
/// all of these). `target` is the request target as sent (percent-encoded, with or without
/// its query); `user_agent` is empty or `-` when there was none. The record still needs
/// [`validate`].
pub fn record_request(
    host: &str,
    at: Timestamp,
    method: &[u8],
    target: &[u8],
    status: u16,
    user_agent: &str,
) -> Result<Option<AccessRecord>, Problem> {
    if status != 200 || method != b"GET" || user_agent.is_empty() || user_agent == "-" {
        return Ok(None);
    }
    let path = decode_path(target)?;
    let Some(hit) = classify(&path, is_installer(user_agent))? else { return Ok(None) };
    let host = host.parse::<IpAddr>().map_err(|_| Problem::BadHost)?.to_string();
    Ok(Some(match hit {
        Hit::Download(filename) => AccessRecord::Download { filename, host, at, client: client_info(user_agent) },
        Hit::Search(package) => AccessRecord::Search { package, host, at, client: client_info(user_agent) },
        Hit::ProjectPage(package) => AccessRecord::ProjectPage { package, host, at, user_agent: product(user_agent) },
        Hit::ProjectJson(package) => AccessRecord::ProjectJson { package, host, at, user_agent: product(user_agent) },
        Hit::Page(page) => AccessRecord::Page { page, host, at, user_agent: product(user_agent) },
    }))
}

/// The fields of a combined-format line, as written (quoted fields still escaped).
struct Fields<'a> {
    host: &'a str,
    time: &'a str,
    request: &'a str,
    status: &'a str,
    user_agent: &'a str,
}

impl<'a> Fields<'a> {
    fn split(line: &'a str) -> Option<Fields<'a>> {
        let mut c = Cursor { rest: line };
        let host = c.token()?;
        let _ident = c.token()?;
        let _user = c.token()?;
        let time = c.bracketed()?;
        let request = c.quoted()?;
        let status = c.token()?;
        let _bytes = c.token()?;
        let _referer = c.quoted()?;
        // The last field: anything after it must be set apart by white space.
        let user_agent = c.quoted_field()?;
        let well_formed = status.len() == 3
            && status.bytes().all(|b| b.is_ascii_digit())
            && (c.rest.is_empty() || c.rest.starts_with([' ', '\t']));
        well_formed.then_some(Fields { host, time, request, status, user_agent })
    }
}

/// Reads a line's fields left to right, each followed by one space.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// Takes the space that must follow a field.
    fn space(&mut self) -> Option<()> {
        self.rest = self.rest.strip_prefix(' ')?;
        Some(())
    }

    /// A non-empty field up to the next space, and the space.
    fn token(&mut self) -> Option<&'a str> {
        let end = self.rest.find(' ')?;
        let token = &self.rest[..end];
        self.rest = &self.rest[end..];
        self.space()?;
        (!token.is_empty()).then_some(token)
    }

    /// A field between `[` and `]`, and the space.
    fn bracketed(&mut self) -> Option<&'a str> {
        let inner = self.rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        self.rest = &inner[end + 1..];
        self.space()?;
        Some(&inner[..end])
    }

    /// A quoted field and the space.
    fn quoted(&mut self) -> Option<&'a str> {
        let field = self.quoted_field()?;
        self.space()?;
        Some(field)
    }

    /// A field between double quotes, in which a backslash escapes the next character.
    fn quoted_field(&mut self) -> Option<&'a str> {
        let inner = self.rest.strip_prefix('"')?;
        let bytes = inner.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.rest = &inner[i + 1..];
                    return Some(&inner[..i]);
                }
                _ => i += 1,
            }
        }
        None
    }
}

/// Undoes the escapes web servers write in quoted fields: `\"`, `\\`, `\n`-style letters and
/// `\xHH` bytes (Apache escapes `"`, `\` and unprintable bytes this way, nginx writes `\xHH`
/// for all of them). An unknown escape is kept as written.
fn unescape(field: &str) -> Cow<'_, [u8]> {
    if !field.contains('\\') {
        return Cow::Borrowed(field.as_bytes());
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 >= bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escaped = match bytes[i + 1] {
            b'"' => Some((b'"', 2)),
            b'\\' => Some((b'\\', 2)),
            b'n' => Some((b'\n', 2)),
            b'r' => Some((b'\r', 2)),
            b't' => Some((b'\t', 2)),
            b'b' => Some((0x08, 2)),
            b'f' => Some((0x0c, 2)),
            b'v' => Some((0x0b, 2)),
            b'x' => bytes.get(i + 2..i + 4).and_then(hex_byte).map(|b| (b, 4)),
            _ => None,
        };
        match escaped {
            Some((byte, len)) => {
                out.push(byte);
                i += len;
            }
            None => {
                out.push(b'\\');
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The byte two hex digits stand for.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let digit = |d: u8| char::from(d).to_digit(16);
    match digits {
        [hi, lo] => Some(u8::try_from(digit(*hi)? * 16 + digit(*lo)?).ok()?),
        _ => None,
    }
}

/// `10/Oct/2024:13:55:36 +0200` in UTC. The format is fixed (web servers write it in the C
/// locale), so it is read field by field rather than through a format string.
fn parse_time(text: &str) -> Result<Timestamp, Problem> {
    const MONTHS: [&[u8; 3]; 12] = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let b = text.as_bytes();
    let shape = b.len() == 26 && b[2] == b'/' && b[6] == b'/' && b[11] == b':' && b[14] == b':' && b[17] == b':' && b[20] == b' ';
    if !shape {
        return Err(Problem::BadTime);
    }
    let number = |range: std::ops::Range<usize>| -> Result<u32, Problem> {
        b[range].iter().try_fold(0u32, |n, &d| if d.is_ascii_digit() { Ok(n * 10 + u32::from(d - b'0')) } else { Err(Problem::BadTime) })
    };
    let month = MONTHS.iter().position(|m| m[..] == b[3..6]).ok_or(Problem::BadTime)? as u32 + 1;
    let (offset_hours, offset_minutes) = (number(22..24)?, number(24..26)?);
    if offset_hours > 23 || offset_minutes > 59 {
        return Err(Problem::BadTime);
    }
    let offset = i64::from(offset_hours * 60 + offset_minutes);
    let offset = match b[21] {
        b'+' => offset,
        b'-' => -offset,
        _ => return Err(Problem::BadTime),
    };
    let (year, day) = (number(7..11)?, number(0..2)?);
    let (hour, minute, second) = (number(12..14)?, number(15..17)?, number(18..20)?);
    let local = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)
        .and_then(|date| date.and_hms_opt(hour, minute, second))
        .ok_or(Problem::BadTime)?;
    Ok(DateTime::from_naive_utc_and_offset(local - TimeDelta::minutes(offset), Utc))
}

/// The path of a request target, percent-decoded: refuses anything but an absolute path of
/// printable ASCII, bad percent-encoding, encoded separators or control characters, bytes
/// that are not UTF-8 once decoded, `.` and `..` segments, and empty segments but the last.
/// The query and fragment are dropped.
fn decode_path(target: &[u8]) -> Result<String, Problem> {
    if target.first() != Some(&b'/') {
        return Err(Problem::BadPath);
    }
    let end = target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len());
    let raw = &target[..end];
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !(0x21..=0x7e).contains(&b) || b == b'\\' {
            return Err(Problem::BadPath);
        }
        if b == b'%' {
            let byte = raw.get(i + 1..i + 3).and_then(hex_byte).ok_or(Problem::BadPath)?;
            if byte < 0x20 || byte == 0x7f || byte == b'/' || byte == b'\\' {
                return Err(Problem::BadPath);
            }
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let path = String::from_utf8(decoded).map_err(|_| Problem::BadPath)?;
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return Err(Problem::BadPath);
        }
    }
    Ok(path)
}

/// What a request's path shows it was.
enum Hit {
    Download(String),
    Search(String),
    ProjectPage(String),
    ProjectJson(String),
    Page(String),
}

/// Which record a path (already checked by [`decode_path`]) makes, if any.
fn classify(path: &str, installer: bool) -> Result<Option<Hit>, Problem> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let package = |name: &str| package_name(name).ok_or(Problem::BadName);
    let hit = match segments.as_slice() {
        ["simple", _, file] if file.ends_with(".whl") => {
            WheelName::parse(file).map_err(|_| Problem::BadName)?;
            Hit::Download((*file).to_string())
        }
        ["simple", name, "" | "index.html"] if installer => Hit::Search(package(name)?),
        ["project", name, "" | "index.html"] => Hit::ProjectPage(package(name)?),
        ["project", name, "json", "" | "index.json"] => Hit::ProjectJson(package(name)?),
        [""] | ["index.html"] => Hit::Page("home".into()),
        [file] if file.ends_with(".html") => {
            let page = &file[..file.len() - ".html".len()];
            if !valid_page(page) {
                return Err(Problem::BadName);
            }
            Hit::Page(page.to_string())
        }
        _ => return Ok(None),
    };
    Ok(Some(hit))
}

/// The canonical form of a valid project name (letters, digits, `.`, `-`, `_`, beginning and
/// ending with a letter or digit, at most [`limits::PACKAGE`] characters).
pub fn package_name(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= limits::PACKAGE
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    valid.then(|| canonicalize(name))
}

/// Whether a page name (the file name without `.html`) is one worth recording: letters,
/// digits, `-` and `_`, at most [`limits::PAGE`] characters.
fn valid_page(page: &str) -> bool {
    !page.is_empty() && page.len() <= limits::PAGE && page.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Whether a User-Agent is an installer's, which describes its platform after its name.
fn is_installer(agent: &str) -> bool {
    agent.starts_with("pip/") || agent.starts_with("uv/")
}

/// A User-Agent's product name, for page hits: the part before the first `/`, lower-cased,
/// cleaned and cut to [`limits::USER_AGENT`] (`Mozilla/5.0 (X11; …)` → `mozilla`).
fn product(agent: &str) -> String {
    let name = agent.split('/').next().unwrap_or_default();
    clean(&name.to_lowercase(), limits::USER_AGENT)
}

/// What an installer's User-Agent says about its platform. pip and uv write their name and
/// version, then a JSON object: `cpu`, `distro.name`/`.version`, `system.name`/`.release`,
/// `implementation.name`/`.version` (the name is CPython when `implementation` is missing,
/// the version falls back to `python`), `installer.name`/`.version` (falling back to the
/// name and version before the object) and `setuptools_version`. Values that are not strings
/// are ignored; an object that does not parse gives only the installer. Other agents give
/// nothing.
pub fn client_info(agent: &str) -> ClientInfo {
    if !is_installer(agent) {
        return ClientInfo::default();
    }
    let token = agent.split(' ').next().unwrap_or_default();
    let (name, version) = token.split_once('/').unwrap_or((token, ""));
    let mut info = ClientInfo {
        installer_name: text(name, limits::INSTALLER_NAME),
        installer_version: text(version, limits::CLIENT_FIELD),
        ..ClientInfo::default()
    };
    let Some(start) = agent.find('{') else { return info };
    // The first JSON value after the name; anything after it is ignored. serde_json limits
    // nesting, so a hostile object cannot exhaust the stack.
    let Some(Ok(Value::Object(data))) = serde_json::Deserializer::from_str(&agent[start..]).into_iter::<Value>().next() else {
        return info;
    };
    let field = |path: &[&str], max: usize| -> Option<String> {
        let mut value = data.get(path[0])?;
        for key in &path[1..] {
            value = value.get(key)?;
        }
        text(value.as_str()?, max)
    };
    let c = limits::CLIENT_FIELD;
    info.arch = field(&["cpu"], c);
    info.distro_name = field(&["distro", "name"], c);
    info.distro_version = field(&["distro", "version"], c);
    info.os_name = field(&["system", "name"], c);
    info.os_version = field(&["system", "release"], c);
    info.py_name = if data.contains_key("implementation") { field(&["implementation", "name"], c) } else { Some("CPython".into()) };
    info.py_version = field(&["implementation", "version"], c).or_else(|| field(&["python"], c));
    if let Some(installer) = field(&["installer", "name"], limits::INSTALLER_NAME) {
        info.installer_name = Some(installer);
        info.installer_version = field(&["installer", "version"], c);
    }
    info.setuptools_version = field(&["setuptools_version"], c);
    info
}

/// Text with control characters removed and surrounding white space trimmed, cut to `max`
/// characters.
pub fn clean(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let kept: String = text.chars().filter(|c| !c.is_control()).collect();
    kept.trim().chars().take(max).collect::<String>().trim_end().to_string()
}

/// [`clean`]ed text, or None when nothing is left.
fn text(value: &str, max: usize) -> Option<String> {
    Some(clean(value, max)).filter(|t| !t.is_empty())
}

// ------------------------------------------------------------------------------------------
// Validation
// ------------------------------------------------------------------------------------------

/// Checks a record from an untrusted source, as both piw-logger and the master do before
/// storing it: the client must be an IP address (written in its canonical form), the time
/// between 2000 and an hour ahead of `now`, a download's file name a wheel's, a package name
/// valid (it is made canonical) and a page name short and plain. Text fields lose their
/// control characters and are cut to their column's length, so the database never refuses
/// what passes.
pub fn validate(record: AccessRecord, now: Timestamp) -> Result<AccessRecord, Problem> {
    let host = |host: String| host.trim().parse::<IpAddr>().map(|ip| ip.to_string()).map_err(|_| Problem::BadHost);
    let earliest = DateTime::from_timestamp(EARLIEST, 0).unwrap_or_default();
    let time = |at: Timestamp| if at >= earliest && at <= now + FUTURE_SLACK { Ok(at) } else { Err(Problem::BadTime) };
    let package = |name: String| package_name(&name).ok_or(Problem::BadName);
    let agent = |agent: String| clean(&agent, limits::USER_AGENT);
    Ok(match record {
        AccessRecord::Download { filename, host: h, at, client } => {
            if WheelName::parse(&filename).is_err() || filename.chars().count() > limits::FILENAME {
                return Err(Problem::BadName);
            }
            AccessRecord::Download { filename, host: host(h)?, at: time(at)?, client: clean_client(client) }
        }
        AccessRecord::Search { package: p, host: h, at, client } => {
            AccessRecord::Search { package: package(p)?, host: host(h)?, at: time(at)?, client: clean_client(client) }
        }
        AccessRecord::ProjectPage { package: p, host: h, at, user_agent } => {
            AccessRecord::ProjectPage { package: package(p)?, host: host(h)?, at: time(at)?, user_agent: agent(user_agent) }
        }
        AccessRecord::ProjectJson { package: p, host: h, at, user_agent } => {
            AccessRecord::ProjectJson { package: package(p)?, host: host(h)?, at: time(at)?, user_agent: agent(user_agent) }
        }
        AccessRecord::Page { page, host: h, at, user_agent } => {
            if !valid_page(&page) {
                return Err(Problem::BadName);
            }
            AccessRecord::Page { page, host: host(h)?, at: time(at)?, user_agent: agent(user_agent) }
        }
    })
}

/// A client's fields cleaned and cut to their columns; empty ones become None.
fn clean_client(client: ClientInfo) -> ClientInfo {
    let f = |value: Option<String>, max: usize| value.and_then(|v| text(&v, max));
    let c = limits::CLIENT_FIELD;
    ClientInfo {
        arch: f(client.arch, c),
        distro_name: f(client.distro_name, c),
        distro_version: f(client.distro_version, c),
        os_name: f(client.os_name, c),
        os_version: f(client.os_version, c),
        py_name: f(client.py_name, c),
        py_version: f(client.py_version, c),
        installer_name: f(client.installer_name, limits::INSTALLER_NAME),
        installer_version: f(client.installer_version, c),
        setuptools_version: f(client.setuptools_version, c),
    }
}

// ------------------------------------------------------------------------------------------
// Reading lines
// ------------------------------------------------------------------------------------------

/// One line from [`Lines`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, without its line feed.
    Text(&'a [u8]),
    /// A line longer than the limit, skipped without being kept in memory.
    TooLong,
}

/// Splits a byte stream into lines of at most `max` bytes, whatever the bytes are: a longer
/// line is reported as [`Line::TooLong`] and skipped up to its line feed without growing the
/// buffer, so a hostile log cannot make the reader hold more than `max` bytes.
#[derive(Debug)]
pub struct Lines<R> {
    reader: R,
    max: usize,
    line: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    /// Lines of `reader`, each at most `max` bytes.
    pub fn new(reader: R, max: usize) -> Self {
        Lines { reader, max, line: Vec::new() }
    }

    /// The next line, or None at the end of the stream (a last line without a line feed is
    /// still a line).
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.line.clear();
        let mut too_long = false;
        let mut seen = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            seen = true;
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(n) => (&available[..n], n + 1),
                None => (available, available.len()),
            };
            if !too_long {
                if self.line.len() + chunk.len() > self.max {
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let ended = done > chunk.len();
            self.reader.consume(done);
            if ended {
                break;
            }
        }
        Ok(match (seen, too_long) {
            (false, _) => None,
            (true, true) => Some(Line::TooLong),
            (true, false) => Some(Line::Text(&self.line)),
        })
    }
}

#[cfg(test)]
mod tests;
