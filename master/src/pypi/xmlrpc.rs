//! A client for the two XML-RPC methods of PyPI's changelog the farm uses:
//! `changelog_last_serial()` and `changelog_since_serial(n)`. Every failure — a timeout, a
//! refused connection, an HTTP error status (5xx, 429, …), an XML-RPC fault, or a body that is
//! not the XML-RPC expected — is a [`PypiError`] for the caller to back off on; nothing here
//! panics on what the server sends.

use std::time::Duration;

use quick_xml::events::Event as XmlEvent;
use quick_xml::reader::Reader;

/// One row of PyPI's changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The project name as PyPI spells it.
    pub name: String,
    /// The release, when the event concerns one.
    pub version: Option<String>,
    /// When, in seconds since the epoch.
    pub timestamp: i64,
    /// What happened, in PyPI's words (`create`, `add source file …`, `remove release`, …).
    pub action: String,
    /// The event's serial number.
    pub serial: i64,
}

/// Why a changelog request failed.
#[derive(Debug, thiserror::Error)]
pub enum PypiError {
    /// The request did not complete (connection refused or reset, timeout).
    #[error("PyPI request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error status.
    #[error("PyPI answered HTTP {0}")]
    Status(u16),
    /// The server answered with an XML-RPC fault.
    #[error("PyPI answered with fault {code}: {message}")]
    Fault {
        /// The fault code (-32500 is PyPI's rate limit).
        code: i64,
        /// The fault string.
        message: String,
    },
    /// The body is not the XML-RPC answer expected.
    #[error("PyPI's answer is malformed: {0}")]
    Malformed(String),
}

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Bool(bool),
    Double(f64),
    Str(String),
    Nil,
    Array(Vec<Value>),
    Struct(Vec<(String, Value)>),
}

/// A changelog client for one XML-RPC endpoint.
#[derive(Debug, Clone)]
pub struct ChangelogClient {
    http: reqwest::Client,
    url: String,
}

impl ChangelogClient {
    /// A client of the XML-RPC endpoint at `url`; each request gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<ChangelogClient, PypiError> {
        super::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("piwheels-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ChangelogClient { http, url: url.to_string() })
    }

    /// The serial of the newest event.
    pub async fn last_serial(&self) -> Result<i64, PypiError> {
        match self.call("changelog_last_serial", None).await? {
            Value::Int(serial) => Ok(serial),
            other => Err(PypiError::Malformed(format!("expected an int, got {other:?}"))),
        }
    }

    /// The events after `serial`, in serial order.
    pub async fn since_serial(&self, serial: i64) -> Result<Vec<RawEvent>, PypiError> {
        let Value::Array(rows) = self.call("changelog_since_serial", Some(serial)).await? else {
            return Err(PypiError::Malformed("expected an array of events".into()));
        };
        rows.into_iter().map(event_from_row).collect()
    }

    async fn call(&self, method: &str, param: Option<i64>) -> Result<Value, PypiError> {
        let params = param.map_or_else(String::new, |p| format!("<param><value><int>{p}</int></value></param>"));
        let body = format!("<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>");
        let response = self.http.post(&self.url).header("Content-Type", "text/xml").body(body).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(PypiError::Status(status.as_u16()));
        }
        let text = response.text().await?;
        parse_response(&text)
    }
}

fn event_from_row(row: Value) -> Result<RawEvent, PypiError> {
    let bad = |why: &str| PypiError::Malformed(format!("changelog row {why}"));
    let Value::Array(fields) = row else { return Err(bad("is not an array")) };
    let [name, version, timestamp, action, serial] = <[Value; 5]>::try_from(fields).map_err(|f| bad(&format!("has {} fields, not 5", f.len())))?;
    let text = |v: Value, what: &str| match v {
        Value::Str(s) => Ok(s),
        _ => Err(bad(&format!("has a {what} that is not a string"))),
    };
    let int = |v: Value, what: &str| match v {
        Value::Int(i) => Ok(i),
        _ => Err(bad(&format!("has a {what} that is not an int"))),
    };
    Ok(RawEvent {
        name: text(name, "name")?,
        version: match version {
            Value::Nil => None,
            Value::Str(s) => Some(s),
            _ => return Err(bad("has a version that is neither a string nor nil")),
        },
        timestamp: int(timestamp, "timestamp")?,
        action: text(action, "action")?,
        serial: int(serial, "serial")?,
    })
}

/// Parses a methodResponse: its one value, or its fault.
fn parse_response(xml: &str) -> Result<Value, PypiError> {
    let tokens = tokenize(xml)?;
    let mut p = Parser { tokens: &tokens, at: 0 };
    p.open("methodResponse")?;
    let value = if p.peek_open("fault") {
        p.open("fault")?;
        let fault = p.value()?;
        p.close("fault")?;
        let Value::Struct(members) = fault else { return Err(PypiError::Malformed("fault is not a struct".into())) };
        let field = |name: &str| members.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let code = match field("faultCode") {
            Some(Value::Int(code)) => code,
            _ => return Err(PypiError::Malformed("fault without a faultCode".into())),
        };
        let message = match field("faultString") {
            Some(Value::Str(s)) => s,
            _ => String::new(),
        };
        return Err(PypiError::Fault { code, message });
    } else {
        p.open("params")?;
        p.open("param")?;
        let value = p.value()?;
        p.close("param")?;
        p.close("params")?;
        value
    };
    p.close("methodResponse")?;
    Ok(value)
}

#[derive(Debug, PartialEq)]
enum Token {
    Open(String),
    Close(String),
    Empty(String),
    Text(String),
}

fn tokenize(xml: &str) -> Result<Vec<Token>, PypiError> {
    let malformed = |e: &dyn std::fmt::Display| PypiError::Malformed(e.to_string());
    let mut reader = Reader::from_str(xml);
    let mut tokens = Vec::new();
    loop {
        match reader.read_event().map_err(|e| malformed(&e))? {
            XmlEvent::Start(e) => tokens.push(Token::Open(e.name().0.to_string())),
            XmlEvent::End(e) => tokens.push(Token::Close(e.name().0.to_string())),
            XmlEvent::Empty(e) => tokens.push(Token::Empty(e.name().0.to_string())),
            XmlEvent::Text(t) => tokens.push(Token::Text(t.into_inner().into_owned())),
            XmlEvent::GeneralRef(r) => {
                // Character and entity references inside text (&amp;, &#233;, …).
                let name = r.into_inner();
                let text = quick_xml::escape::unescape(&format!("&{name};")).map_err(|e| malformed(&e))?.into_owned();
                tokens.push(Token::Text(text));
            }
            XmlEvent::CData(c) => tokens.push(Token::Text(c.into_inner().into_owned())),
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    // Join adjacent text pieces and drop whitespace between elements.
    let mut joined: Vec<Token> = Vec::with_capacity(tokens.len());
    for token in tokens {
        match (joined.last_mut(), token) {
            (Some(Token::Text(prev)), Token::Text(more)) => prev.push_str(&more),
            (_, token) => joined.push(token),
        }
    }
    Ok(joined)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while matches!(self.tokens.get(self.at), Some(Token::Text(t)) if t.trim().is_empty()) {
            self.at += 1;
        }
    }

    fn peek_open(&mut self, name: &str) -> bool {
        self.skip_space();
        matches!(self.tokens.get(self.at), Some(Token::Open(n)) if n == name)
    }

    fn open(&mut self, name: &str) -> Result<(), PypiError> {
        self.skip_space();
        match self.tokens.get(self.at) {
            Some(Token::Open(n)) if n == name => {
                self.at += 1;
                Ok(())
            }
            other => Err(PypiError::Malformed(format!("expected <{name}>, found {other:?}"))),
        }
    }

    fn close(&mut self, name: &str) -> Result<(), PypiError> {
        self.skip_space();
        match self.tokens.get(self.at) {
            Some(Token::Close(n)) if n == name => {
                self.at += 1;
                Ok(())
            }
            other => Err(PypiError::Malformed(format!("expected </{name}>, found {other:?}"))),
        }
    }

    /// Text up to the closing tag (empty when there is none).
    fn text(&mut self) -> String {
        match self.tokens.get(self.at) {
            Some(Token::Text(t)) => {
                self.at += 1;
                t.clone()
            }
            _ => String::new(),
        }
    }

    fn value(&mut self) -> Result<Value, PypiError> {
        self.skip_space();
        if matches!(self.tokens.get(self.at), Some(Token::Empty(n)) if n == "value") {
            self.at += 1;
            return Ok(Value::Str(String::new()));
        }
        self.open("value")?;
        let value = match self.tokens.get(self.at) {
            // A bare string: <value>text</value>.
            Some(Token::Text(t)) if !t.trim().is_empty() || matches!(self.tokens.get(self.at + 1), Some(Token::Close(n)) if n == "value") => {
                self.at += 1;
                Value::Str(t.clone())
            }
            Some(Token::Close(n)) if n == "value" => Value::Str(String::new()),
            _ => {
                self.skip_space();
                match self.tokens.get(self.at) {
                    Some(Token::Empty(n)) if n == "nil" => {
                        self.at += 1;
                        Value::Nil
                    }
                    Some(Token::Empty(n)) if n == "string" => {
                        self.at += 1;
                        Value::Str(String::new())
                    }
                    Some(Token::Open(n)) => {
                        let tag = n.clone();
                        self.at += 1;
                        let value = self.typed(&tag)?;
                        self.close(&tag)?;
                        value
                    }
                    other => return Err(PypiError::Malformed(format!("unexpected {other:?} in a value"))),
                }
            }
        };
        self.close("value")?;
        Ok(value)
    }

    fn typed(&mut self, tag: &str) -> Result<Value, PypiError> {
        let number = |t: String| t.trim().parse::<i64>().map_err(|_| PypiError::Malformed(format!("bad <{tag}> {t:?}")));
        Ok(match tag {
            "int" | "i4" | "i8" => Value::Int(number(self.text())?),
            "boolean" => Value::Bool(number(self.text())? != 0),
            "double" => {
                let t = self.text();
                Value::Double(t.trim().parse().map_err(|_| PypiError::Malformed(format!("bad <double> {t:?}")))?)
            }
            "string" | "dateTime.iso8601" | "base64" => Value::Str(self.text()),
            "nil" => Value::Nil,
            "array" => {
                self.open("data")?;
                let mut items = Vec::new();
                while !{
                    self.skip_space();
                    matches!(self.tokens.get(self.at), Some(Token::Close(n)) if n == "data")
                } {
                    items.push(self.value()?);
                }
                self.close("data")?;
                Value::Array(items)
            }
            "struct" => {
                let mut members = Vec::new();
                while self.peek_open("member") {
                    self.open("member")?;
                    self.open("name")?;
                    let name = self.text();
                    self.close("name")?;
                    let value = self.value()?;
                    self.close("member")?;
                    members.push((name, value));
                }
                Value::Struct(members)
            }
            other => return Err(PypiError::Malformed(format!("unknown value type <{other}>"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_changelog_with_nil_versions_and_escapes() {
        let xml = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><array><data>\n\
            <value><array><data><value><string>foo</string></value><value><nil/></value><value><int>1700000000</int></value>\
            <value><string>create</string></value><value><int>12</int></value></data></array></value>\n\
            <value><array><data><value>b&amp;r</value><value><string>1.0</string></value><value><i4>1700000001</i4></value>\
            <value><string>add source file b&amp;r-1.0.tar.gz</string></value><value><int>13</int></value></data></array></value>\n\
            </data></array></value>\n</param>\n</params>\n</methodResponse>\n";
        let Value::Array(rows) = parse_response(xml).unwrap() else { panic!() };
        let events: Vec<RawEvent> = rows.into_iter().map(|r| event_from_row(r).unwrap()).collect();
        assert_eq!(events[0], RawEvent { name: "foo".into(), version: None, timestamp: 1_700_000_000, action: "create".into(), serial: 12 });
        assert_eq!(events[1].name, "b&r");
        assert_eq!(events[1].action, "add source file b&r-1.0.tar.gz");
    }

    #[test]
    fn faults_and_garbage_are_errors() {
        let fault = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32500</int></value></member>\
            <member><name>faultString</name><value><string>slow down</string></value></member></struct></value></fault></methodResponse>";
        assert!(matches!(parse_response(fault), Err(PypiError::Fault { code: -32500, .. })));
        for garbage in ["", "not xml", "<methodResponse>", "<methodResponse><params></params></methodResponse>", "<a><b></a>"] {
            assert!(matches!(parse_response(garbage), Err(PypiError::Malformed(_))), "{garbage:?}");
        }
        let short_row = "<methodResponse><params><param><value><array><data><value><array><data><value>x</value></data></array></value>\
            </data></array></value></param></params></methodResponse>";
        let Value::Array(rows) = parse_response(short_row).unwrap() else { panic!() };
        assert!(event_from_row(rows[0].clone()).is_err());
    }
}
