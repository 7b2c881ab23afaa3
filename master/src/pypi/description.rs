//! A project's one-line summary from PyPI's JSON API (`<json-url>/<project>/json`), for the
//! project pages. A summary that cannot be had (unknown project, server error, timeout, bad
//! JSON) is simply unknown: the caller keeps what it has.

use std::time::Duration;

/// The longest summary kept (the `packages.description` column's size).
pub const MAX_DESCRIPTION: usize = 200;

/// A client of the JSON API.
#[derive(Debug, Clone)]
pub struct DescriptionClient {
    http: reqwest::Client,
    url: String,
}

impl DescriptionClient {
    /// A client of the JSON API rooted at `url`; each request gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<DescriptionClient, reqwest::Error> {
        super::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(timeout).user_agent(concat!("piwheels-rs/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(DescriptionClient { http, url: url.trim_end_matches('/').to_string() })
    }

    /// The project's summary ("" when it has none), cut to [`MAX_DESCRIPTION`] characters
    /// with an ellipsis; None when it cannot be had.
    pub async fn summary(&self, project: &str) -> Option<String> {
        let url = format!("{}/{project}/json", self.url);
        let response = match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                tracing::debug!("no description for {project}: HTTP {}", response.status());
                return None;
            }
            Err(e) => {
                tracing::debug!("no description for {project}: {e}");
                return None;
            }
        };
        let json: serde_json::Value = match response.json().await {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!("bad JSON from {url}: {e}");
                return None;
            }
        };
        let Some(info) = json.get("info") else {
            tracing::warn!("no info in the JSON from {url}");
            return None;
        };
        let summary = info.get("summary").and_then(serde_json::Value::as_str).unwrap_or_default();
        Some(shorten(summary))
    }
}

fn shorten(summary: &str) -> String {
    let summary = summary.trim();
    if summary.chars().count() <= MAX_DESCRIPTION {
        summary.to_string()
    } else {
        let mut short: String = summary.chars().take(MAX_DESCRIPTION - 1).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_summaries_are_cut_with_an_ellipsis() {
        assert_eq!(shorten(" short "), "short");
        let long = "x".repeat(500);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with('…'));
    }
}
