//! The access-log parser: each line shape, installers' User-Agents, and hostile lines.

use super::*;

const PIP_UA: &str = r#"pip/24.0 {\"ci\":null,\"cpu\":\"aarch64\",\"distro\":{\"id\":\"bookworm\",\"libc\":{\"lib\":\"glibc\",\"version\":\"2.36\"},\"name\":\"Debian GNU/Linux\",\"version\":\"12\"},\"implementation\":{\"name\":\"CPython\",\"version\":\"3.11.2\"},\"installer\":{\"name\":\"pip\",\"version\":\"24.0\"},\"openssl_version\":\"OpenSSL 3.0.15 3 Sep 2024\",\"python\":\"3.11.2\",\"rustc_version\":null,\"setuptools_version\":\"66.1.1\",\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51+rpt-rpi-v8\"}}"#;
const UV_UA: &str = r#"uv/0.5.4 {\"installer\":{\"name\":\"uv\",\"version\":\"0.5.4\"},\"python\":\"3.12.7\",\"implementation\":{\"name\":\"CPython\",\"version\":\"3.12.7\"},\"distro\":{\"name\":\"Raspbian GNU/Linux\",\"version\":\"12\",\"id\":\"bookworm\",\"libc\":{\"lib\":\"glibc\",\"version\":\"2.36\"}},\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51+rpt-rpi-v7\"},\"cpu\":\"armv7l\",\"openssl_version\":null,\"setuptools_version\":null,\"rustc_version\":null,\"ci\":null}"#;
const BROWSER: &str = "Mozilla/5.0 (X11; Linux aarch64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36";
const WHEEL: &str = "numpy-2.1.3-cp311-cp311-linux_armv7l.whl";

/// A combined-format line.
fn line(host: &str, request: &str, status: u16, agent: &str) -> String {
    format!(r#"{host} - - [01/Mar/2025:10:00:00 +0100] "{request}" {status} 5123 "-" "{agent}""#)
}

fn get(path: &str, agent: &str) -> String {
    line("192.0.2.10", &format!("GET {path} HTTP/1.1"), 200, agent)
}

fn parse(text: &str) -> Result<Option<AccessRecord>, Problem> {
    parse_line(text.as_bytes())
}

fn at() -> Timestamp {
    "2025-03-01T09:00:00Z".parse().unwrap()
}

fn now() -> Timestamp {
    "2025-03-02T00:00:00Z".parse().unwrap()
}

// ---- line shapes ------------------------------------------------------------------------

#[test]
fn a_pip_download_records_the_file_and_the_platform() {
    let record = parse(&get(&format!("/simple/numpy/{WHEEL}"), PIP_UA)).unwrap().unwrap();
    let AccessRecord::Download { filename, host, at: when, client } = record else { panic!("{record:?}") };
    assert_eq!(filename, WHEEL);
    assert_eq!(host, "192.0.2.10");
    assert_eq!(when, at(), "the time is converted to UTC");
    assert_eq!(
        client,
        ClientInfo {
            arch: Some("aarch64".into()),
            distro_name: Some("Debian GNU/Linux".into()),
            distro_version: Some("12".into()),
            os_name: Some("Linux".into()),
            os_version: Some("6.6.51+rpt-rpi-v8".into()),
            py_name: Some("CPython".into()),
            py_version: Some("3.11.2".into()),
            installer_name: Some("pip".into()),
            installer_version: Some("24.0".into()),
            setuptools_version: Some("66.1.1".into()),
        }
    );
}

#[test]
fn a_uv_download_records_the_platform_uv_describes() {
    let record = parse(&get(&format!("/simple/numpy/{WHEEL}"), UV_UA)).unwrap().unwrap();
    let AccessRecord::Download { client, .. } = record else { panic!("{record:?}") };
    assert_eq!(client.installer_name.as_deref(), Some("uv"));
    assert_eq!(client.installer_version.as_deref(), Some("0.5.4"));
    assert_eq!(client.arch.as_deref(), Some("armv7l"));
    assert_eq!(client.distro_name.as_deref(), Some("Raspbian GNU/Linux"));
    assert_eq!(client.py_version.as_deref(), Some("3.12.7"));
    assert_eq!(client.setuptools_version, None, "null is no value");
}

#[test]
fn a_download_by_another_client_records_no_platform() {
    let record = parse(&get(&format!("/simple/numpy/{WHEEL}"), "Wget/1.21.3")).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Download { ref client, .. } if *client == ClientInfo::default()), "{record:?}");
}

#[test]
fn an_installer_looking_a_project_up_is_a_search_under_its_canonical_name() {
    for path in ["/simple/RPi.GPIO/", "/simple/rpi_gpio/index.html"] {
        let record = parse(&get(path, PIP_UA)).unwrap().unwrap();
        let AccessRecord::Search { package, client, .. } = record else { panic!("{path}: {record:?}") };
        assert_eq!(package, "rpi-gpio");
        assert_eq!(client.arch.as_deref(), Some("aarch64"));
    }
    let record = parse(&get("/simple/gpiozero/", UV_UA)).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Search { ref package, .. } if package == "gpiozero"));
}

#[test]
fn project_pages_and_their_json() {
    for path in ["/project/GPIOZero/", "/project/gpiozero/index.html"] {
        let record = parse(&get(path, BROWSER)).unwrap().unwrap();
        assert_eq!(
            record,
            AccessRecord::ProjectPage { package: "gpiozero".into(), host: "192.0.2.10".into(), at: at(), user_agent: "mozilla".into() },
            "{path}"
        );
    }
    for path in ["/project/gpiozero/json/", "/project/gpiozero/json/index.json"] {
        let record = parse(&get(path, "python-requests/2.32.3")).unwrap().unwrap();
        assert!(
            matches!(record, AccessRecord::ProjectJson { ref package, ref user_agent, .. } if package == "gpiozero" && user_agent == "python-requests"),
            "{path}: {record:?}"
        );
    }
}

#[test]
fn the_home_page_and_other_pages() {
    for (path, page) in [("/", "home"), ("/index.html", "home"), ("/faq.html", "faq"), ("/packages.html", "packages")] {
        let record = parse(&get(path, "Mythic HTTP Monitor Check")).unwrap().unwrap();
        assert!(
            matches!(record, AccessRecord::Page { page: ref p, ref user_agent, .. } if p == page && user_agent == "mythic http monitor check"),
            "{path}: {record:?}"
        );
    }
}

#[test]
fn requests_that_record_nothing() {
    let download = format!("/simple/numpy/{WHEEL}");
    for text in [
        line("192.0.2.1", &format!("GET {download} HTTP/1.1"), 404, PIP_UA),
        line("192.0.2.1", &format!("GET {download} HTTP/1.1"), 206, PIP_UA),
        line("192.0.2.1", &format!("GET {download} HTTP/1.1"), 304, PIP_UA),
        line("192.0.2.1", &format!("HEAD {download} HTTP/1.1"), 200, PIP_UA),
        line("192.0.2.1", &format!("POST {download} HTTP/1.1"), 200, PIP_UA),
        line("192.0.2.1", "-", 400, "-"),
        get(&download, "-"),
        get(&download, ""),
        get(&format!("{download}.metadata"), PIP_UA),
        get("/simple/", PIP_UA),
        get("/simple/index.html", BROWSER),
        get("/simple/numpy/", BROWSER),
        get("/project/", BROWSER),
        get("/logs/0000/0001/0002.txt.gz", BROWSER),
        get("/packages.json", BROWSER),
        get("/robots.txt", "Googlebot/2.1"),
        get("/styles/main.css", BROWSER),
    ] {
        assert_eq!(parse(&text), Ok(None), "{text}");
    }
}

#[test]
fn queries_are_ignored_and_percent_encoding_is_decoded() {
    let record = parse(&get("/project/gpio%7Aero/?tab=files", BROWSER)).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::ProjectPage { ref package, .. } if package == "gpiozero"), "{record:?}");
}

#[test]
fn ipv6_clients_and_trailing_fields_and_line_ends() {
    let text = format!("{}\t\"extra\" 0.003\r\n", line("2001:DB8::7", "GET / HTTP/2.0", 200, BROWSER));
    let record = parse(&text).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Page { ref host, .. } if host == "2001:db8::7"), "{record:?}");
    let text = format!("{} \"extra\"", line("192.0.2.1", "GET / HTTP/1.0", 200, BROWSER));
    assert!(parse(&text).unwrap().is_some());
}

#[test]
fn escaped_quotes_as_nginx_writes_them() {
    let agent = PIP_UA.replace(r#"\""#, r"\x22");
    let record = parse(&get(&format!("/simple/numpy/{WHEEL}"), &agent)).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Download { ref client, .. } if client.arch.as_deref() == Some("aarch64")));
}

// ---- installers' User-Agents ------------------------------------------------------------

#[test]
fn an_installer_without_a_json_object_still_names_itself() {
    let info = client_info("pip/9.0.1");
    assert_eq!((info.installer_name.as_deref(), info.installer_version.as_deref()), (Some("pip"), Some("9.0.1")));
    assert_eq!(info.arch, None);
    let info = client_info("pip/23.0 {not json at all");
    assert_eq!(info.installer_name.as_deref(), Some("pip"));
    assert_eq!(info.py_name, None);
}

#[test]
fn json_values_that_are_not_strings_are_ignored() {
    let info = client_info(r#"pip/24.0 {"cpu": 5, "distro": "Debian", "system": [1, 2], "implementation": {"name": null}, "python": "3.11.2", "installer": {"name": {"x": 1}}}"#);
    assert_eq!(info.arch, None);
    assert_eq!(info.distro_name, None);
    assert_eq!(info.os_name, None);
    assert_eq!(info.py_name, None, "implementation is present, without a name");
    assert_eq!(info.py_version.as_deref(), Some("3.11.2"), "falls back to python");
    assert_eq!(info.installer_name.as_deref(), Some("pip"), "falls back to the name before the object");
}

#[test]
fn an_object_without_implementation_means_cpython() {
    let info = client_info(r#"pip/10.0 {"python": "3.5.3"}"#);
    assert_eq!(info.py_name.as_deref(), Some("CPython"));
    assert_eq!(info.py_version.as_deref(), Some("3.5.3"));
}

#[test]
fn installer_fields_are_cut_to_their_columns_and_cleaned() {
    let long = "x".repeat(5000);
    let agent = format!(r#"pip/24.0 {{"cpu": "{long}", "installer": {{"name": "{long}", "version": "1\u0007.0"}}, "system": {{"name": "  "}}}}"#);
    let info = client_info(&agent);
    assert_eq!(info.arch.as_deref().map(str::len), Some(limits::CLIENT_FIELD));
    assert_eq!(info.installer_name.as_deref().map(str::len), Some(limits::INSTALLER_NAME));
    assert_eq!(info.installer_version.as_deref(), Some("1.0"), "control characters removed");
    assert_eq!(info.os_name, None, "blank is no value");
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let agent = format!("pip/24.0 {}{}", "{\"a\":[".repeat(10_000), "]}".repeat(10_000));
    let info = client_info(&agent);
    assert_eq!(info.installer_name.as_deref(), Some("pip"));
    assert_eq!(info.arch, None);
}

// ---- hostile and broken lines -----------------------------------------------------------

#[test]
fn broken_lines_are_malformed() {
    for text in [
        "",
        "garbage",
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / HTTP/1.1" 200 5"#,
        r#"192.0.2.1 - - 01/Mar/2025:10:00:00 +0000 "GET / HTTP/1.1" 200 5 "-" "x""#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / HTTP/1.1" 2000 5 "-" "x""#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "unterminated"#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x"junk"#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / HTTP/1.1 extra" 200 5 "-" "x""#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "GET / FTP/1.1" 200 5 "-" "x""#,
        r#"192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] "-" 200 5 "-" "x""#,
    ] {
        assert_eq!(parse(text), Err(Problem::Malformed), "{text}");
    }
}

#[test]
fn bad_dates_are_refused() {
    for time in [
        "32/Mar/2025:10:00:00 +0000",
        "29/Feb/2025:10:00:00 +0000",
        "01/Foo/2025:10:00:00 +0000",
        "01/mar/2025:10:00:00 +0000",
        "01/Mar/2025:25:00:00 +0000",
        "01/Mar/2025:10:60:00 +0000",
        "01/Mar/2025:10:00:00",
        "01/Mar/2025:10:00:00 +2500",
        "01/Mar/2025:10:00:00 *0000",
        "1/Mar/2025:10:00:00 +00000",
        "0a/Mar/2025:10:00:00 +0000",
        "01/Mar/-025:10:00:00 +0000",
        "yesterday",
        "01/Mar/2025:10:00:00 +00é",
    ] {
        let text = format!(r#"192.0.2.1 - - [{time}] "GET / HTTP/1.1" 200 5 "-" "x""#);
        assert_eq!(parse(&text), Err(Problem::BadTime), "{time}");
    }
}

#[test]
fn times_are_converted_to_utc() {
    for (time, utc) in [
        ("01/Mar/2025:10:00:00 +0000", "2025-03-01T10:00:00Z"),
        ("01/Mar/2025:00:30:00 +0130", "2025-02-28T23:00:00Z"),
        ("31/Dec/2024:23:59:59 -0800", "2025-01-01T07:59:59Z"),
        ("29/Feb/2024:12:00:00 +0000", "2024-02-29T12:00:00Z"),
    ] {
        assert_eq!(parse_time(time), Ok(utc.parse().unwrap()), "{time}");
    }
}

#[test]
fn implausible_times_are_refused_by_validation() {
    let record = |at: &str| AccessRecord::Page { page: "home".into(), host: "192.0.2.1".into(), at: at.parse().unwrap(), user_agent: "x".into() };
    assert_eq!(validate(record("1999-12-31T23:59:59Z"), now()), Err(Problem::BadTime));
    assert_eq!(validate(record("2025-03-02T01:00:01Z"), now()), Err(Problem::BadTime), "more than an hour ahead");
    assert!(validate(record("2025-03-02T00:59:00Z"), now()).is_ok(), "a little ahead is clock skew");
    assert!(validate(record("2017-06-01T00:00:00Z"), now()).is_ok(), "old logs are fine");
}

#[test]
fn clients_that_are_not_addresses_are_refused() {
    for host in ["www.example.org", "-", "192.0.2.300", "1.2.3.4.5"] {
        assert_eq!(parse(&line(host, "GET / HTTP/1.1", 200, BROWSER)), Err(Problem::BadHost), "{host}");
    }
}

#[test]
fn path_traversal_and_encoded_separators_are_refused() {
    for path in [
        "/simple/../etc/passwd",
        "/simple/numpy/../../numpy-1.0-py3-none-any.whl",
        "/simple/./numpy/",
        "/simple//numpy/",
        "/simple/%2e%2e/x/",
        "/simple/numpy%2Fx/",
        "/simple/numpy%5cx/",
        "/simple/numpy%00/",
        "/simple/%ZZ/",
        "/simple/numpy%/",
        "/simple/%ff%fe/",
        "/simple/num\\py/",
        "relative/path",
        "http://index.example/simple/numpy/",
    ] {
        assert_eq!(parse(&get(path, PIP_UA)), Err(Problem::BadPath), "{path}");
    }
    // Escaped bytes in the request line are decoded before the path is checked.
    assert_eq!(parse(&get(r"/simple/\x00numpy/", PIP_UA)), Err(Problem::BadPath));
    assert_eq!(parse(&get(r"/simple/\xc3\xa9/", PIP_UA)), Err(Problem::BadPath));
}

#[test]
fn invalid_names_are_refused() {
    for (path, agent) in [
        ("/simple/numpy/numpy.whl", BROWSER),
        ("/simple/numpy/-1.0-py3-none-any.whl", BROWSER),
        ("/simple/-numpy-/", PIP_UA),
        ("/simple/num%20py/", PIP_UA),
        ("/project/caf%C3%A9/", BROWSER),
        ("/this-page-name-is-far-too-long-to-be-a-page.html", BROWSER),
        ("/we%21rd.html", BROWSER),
    ] {
        assert_eq!(parse(&get(path, agent)), Err(Problem::BadName), "{path}");
    }
    let long = format!("/simple/{}/", "a".repeat(limits::PACKAGE + 1));
    assert_eq!(parse(&get(&long, PIP_UA)), Err(Problem::BadName));
    let long_file = format!("/simple/a/{}-1.0-py3-none-any.whl", "a".repeat(250));
    assert_eq!(parse(&get(&long_file, PIP_UA)), Err(Problem::BadName));
}

#[test]
fn raw_control_characters_are_refused() {
    for c in ['\0', '\u{1b}', '\u{7f}', '\u{85}', '\r'] {
        let text = get(&format!("/simple/numpy/{WHEEL}"), &format!("pip/24.0 x{c}y"));
        assert_eq!(parse(&text), Err(Problem::ControlCharacter), "{c:?}");
    }
    // Escaped control characters in a User-Agent are removed instead.
    let record = parse(&get("/", r"Evil\x1b[31m\x00Bot/1.0")).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Page { ref user_agent, .. } if user_agent == "evil[31mbot"), "{record:?}");
}

#[test]
fn bytes_that_are_not_utf8_are_refused() {
    let mut bytes = get(&format!("/simple/numpy/{WHEEL}"), PIP_UA).into_bytes();
    bytes.insert(10, 0xff);
    assert_eq!(parse_line(&bytes), Err(Problem::NotUtf8));
    assert_eq!(parse_line(&[0xc3, 0x28, b' ', 0xa0, 0xa1]), Err(Problem::NotUtf8));
    // Escaped invalid bytes in a User-Agent become replacement characters.
    let record = parse(&get("/", r"Bad\xff\xfeAgent/1")).unwrap().unwrap();
    assert!(matches!(record, AccessRecord::Page { ref user_agent, .. } if user_agent == "bad\u{fffd}\u{fffd}agent"), "{record:?}");
}

#[test]
fn huge_fields_are_cut_to_their_columns() {
    let agent = format!("{}/1.0", "A".repeat(20_000));
    let record = parse(&get("/project/gpiozero/", &agent)).unwrap().unwrap();
    let AccessRecord::ProjectPage { user_agent, .. } = &record else { panic!("{record:?}") };
    assert_eq!(user_agent.chars().count(), limits::USER_AGENT);
    assert_eq!(validate(record.clone(), now()).unwrap(), record);
    // A multi-byte character is never split.
    let agent = format!("{}/1.0", "é".repeat(300));
    let AccessRecord::ProjectPage { user_agent, .. } = parse(&get("/project/gpiozero/", &agent)).unwrap().unwrap() else { panic!() };
    assert_eq!(user_agent, "é".repeat(limits::USER_AGENT));
}

// ---- validation of records from elsewhere -------------------------------------------------

#[test]
fn validation_makes_names_canonical_and_refuses_invalid_ones() {
    let search = |package: &str| AccessRecord::Search { package: package.into(), host: "192.0.2.1".into(), at: at(), client: ClientInfo::default() };
    assert_eq!(validate(search("RPi.GPIO"), now()), Ok(search("rpi-gpio")));
    assert_eq!(validate(search("../x"), now()), Err(Problem::BadName));
    assert_eq!(validate(search(""), now()), Err(Problem::BadName));
    let download =
        |filename: &str| AccessRecord::Download { filename: filename.into(), host: "192.0.2.1".into(), at: at(), client: ClientInfo::default() };
    assert!(validate(download(WHEEL), now()).is_ok());
    assert_eq!(validate(download("../../etc/passwd"), now()), Err(Problem::BadName));
    let page = |page: &str| AccessRecord::Page { page: page.into(), host: "192.0.2.1".into(), at: at(), user_agent: String::new() };
    assert_eq!(validate(page("a/b"), now()), Err(Problem::BadName));
    assert_eq!(validate(page(&"p".repeat(31)), now()), Err(Problem::BadName));
}

#[test]
fn validation_writes_addresses_canonically_and_cleans_client_fields() {
    let record = AccessRecord::Download {
        filename: WHEEL.into(),
        host: " 2001:0db8:0000::0001 ".into(),
        at: at(),
        client: ClientInfo {
            arch: Some("x".repeat(1000)),
            installer_name: Some("i".repeat(1000)),
            os_name: Some("\u{0}\u{1}".into()),
            distro_name: Some("Debian\nGNU".into()),
            ..ClientInfo::default()
        },
    };
    let AccessRecord::Download { host, client, .. } = validate(record, now()).unwrap() else { panic!() };
    assert_eq!(host, "2001:db8::1");
    assert_eq!(client.arch.unwrap().len(), limits::CLIENT_FIELD);
    assert_eq!(client.installer_name.unwrap().len(), limits::INSTALLER_NAME);
    assert_eq!(client.os_name, None);
    assert_eq!(client.distro_name.as_deref(), Some("DebianGNU"));
}

// ---- reading lines ----------------------------------------------------------------------

fn read_all(input: &[u8], max: usize, buffer: usize) -> Vec<Result<Vec<u8>, ()>> {
    let mut lines = Lines::new(io::BufReader::with_capacity(buffer, input), max);
    let mut out = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        out.push(match line {
            Line::Text(t) => Ok(t.to_vec()),
            Line::TooLong => Err(()),
        });
    }
    out
}

#[test]
fn long_lines_are_skipped_whole_whatever_the_buffer() {
    let mut input = b"short\n".to_vec();
    input.extend(vec![b'x'; 100_000]);
    input.extend(b"\n\nexact\nlast");
    for buffer in [1, 7, 64, 1 << 16] {
        let lines = read_all(&input, 5, buffer);
        assert_eq!(lines, [Ok(b"short".to_vec()), Err(()), Ok(Vec::new()), Ok(b"exact".to_vec()), Ok(b"last".to_vec())], "buffer {buffer}");
    }
    assert_eq!(read_all(b"", 5, 8), []);
    assert_eq!(read_all(&[b'y'; 50], 5, 8), [Err(())], "a long last line without a line feed");
}

// ---- requests seen by a web server ------------------------------------------------------

#[test]
fn a_request_seen_by_a_web_server_records_the_same_as_its_log_line() {
    let agent = PIP_UA.replace(r#"\""#, "\"");
    let path = format!("/simple/numpy/{WHEEL}");
    let seen = record_request("192.0.2.10", at(), b"GET", path.as_bytes(), 200, &agent).unwrap();
    assert_eq!(seen, parse(&get(&path, PIP_UA)).unwrap());
    assert_eq!(record_request("192.0.2.10", at(), b"GET", path.as_bytes(), 404, &agent), Ok(None));
    assert_eq!(record_request("192.0.2.10", at(), b"GET", b"/simple/../x/", 200, &agent), Err(Problem::BadPath));
}
