//! Signed provenance of published wheels: an in-toto Statement (v1) whose subject is the wheel
//! and whose predicate is SLSA Provenance v1, in a DSSE envelope signed with the master's
//! ed25519 key. The master writes one beside each wheel it records (`<wheel>.intoto.jsonl`, a
//! single envelope on one line) and its public key at the root of the served tree
//! ([`PUBLIC_KEY_FILE`], PEM); `piw-verify` checks them. What each field holds is in
//! docs/provenance.md.
//!
//! Every statement is a function of the database's records: signed again, it is the same
//! bytes (ed25519 signatures are deterministic), so a lost side file is written again as it was.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocols::{SourceFile, Timestamp};

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement's `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate's type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of a wheel a builder of the farm made from the release's pinned source.
pub const BUILD_TYPE: &str = "urn:piwheels-rs:build-type:wheel:v1";
/// `buildType` of a wheel an operator imported (built elsewhere, sent with piw-import).
pub const IMPORT_TYPE: &str = "urn:piwheels-rs:build-type:import:v1";
/// What a statement's file name adds to its wheel's.
pub const SUFFIX: &str = ".intoto.jsonl";
/// The master's public signing key, PEM, at the root of the served tree.
pub const PUBLIC_KEY_FILE: &str = "signing-key.pem";

/// An in-toto statement about one wheel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The wheel.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// How it was made.
    pub predicate: Provenance,
}

/// A file and its digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The wheel's file name.
    pub name: String,
    /// `sha256` → lower-case hex.
    pub digest: BTreeMap<String, String>,
}

/// SLSA Provenance v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built, from what.
    pub build_definition: BuildDefinition,
    /// Who built it, when.
    pub run_details: RunDetails,
}

/// SLSA's `buildDefinition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`] or [`IMPORT_TYPE`].
    pub build_type: String,
    /// The release and the ABI the build was asked for.
    pub external_parameters: ExternalParameters,
    /// The builder as the master knows it: its key and label, and what it builds with.
    pub internal_parameters: InternalParameters,
    /// The source distribution the wheel was built from (none for an import).
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// The build that was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    /// Canonical project name.
    pub package: String,
    /// The release.
    pub version: String,
    /// The builder's ABI.
    pub abi: String,
}

/// What the master knows of the builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalParameters {
    /// The builder's (or the importer's) public key as the master authorized it (Z85), None
    /// on a farm run without authentication.
    pub key: Option<String>,
    /// The key's fingerprint (`SHA256:` and 16 hex digits), as `piw-keys list` shows it.
    pub fingerprint: Option<String>,
    /// The builder's label (the key's label, else its host name).
    pub label: String,
    /// What the builder reported it builds with (OS, Python, pip, ...), as it reported it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
}

/// SLSA's `ResourceDescriptor`, for the source file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// The file's name.
    pub name: String,
    /// Where the builder fetched it.
    pub uri: String,
    /// `sha256` → lower-case hex.
    pub digest: BTreeMap<String, String>,
}

/// SLSA's `runDetails`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    /// Who ran the build.
    pub builder: Builder,
    /// When.
    pub metadata: BuildMetadata,
}

/// SLSA's `builder`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// `urn:piwheels-rs:builder:<fingerprint hex>` (or `urn:piwheels-rs:importer:…`); with no
    /// key, `…:label:<label>`.
    pub id: String,
}

/// SLSA's `metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    /// The build's id in the farm's database.
    pub invocation_id: String,
    /// When the master handed the build out (an import: when it began).
    pub started_on: Timestamp,
    /// When the master recorded it.
    pub finished_on: Timestamp,
}

/// What the master records of a build, from which a file's statement is made (the oracles
/// answer the index writer with these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
pub struct BuildFacts {
    /// The wheel's name.
    pub filename: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Canonical project name.
    pub package: String,
    /// The release.
    pub version: String,
    /// The builder's ABI.
    pub abi: String,
    /// Whether an operator imported it (built elsewhere) rather than a builder built it.
    pub imported: bool,
    /// The source it was built from (None for an import).
    pub source: Option<SourceFile>,
    /// The builder's or the importer's key (Z85).
    pub key: Option<String>,
    /// Its label.
    pub label: String,
    /// What it builds with.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "crate::arbitrary::small_map()"))]
    pub environment: BTreeMap<String, String>,
    /// The build's id.
    pub build_id: i64,
    /// When it was handed out (or the import began).
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "crate::arbitrary::arb_timestamp()"))]
    pub started: Timestamp,
    /// When it was recorded.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "crate::arbitrary::arb_timestamp()"))]
    pub finished: Timestamp,
}

impl BuildFacts {
    /// The statement these facts make.
    pub fn statement(&self) -> Statement {
        let sha256 = |hex: &str| BTreeMap::from([("sha256".to_string(), hex.to_string())]);
        let fingerprint = self.key.as_deref().and_then(|key| key.parse::<crate::keys::PublicKey>().ok()).map(|key| key.fingerprint());
        let (build_type, role) = if self.imported { (IMPORT_TYPE, "importer") } else { (BUILD_TYPE, "builder") };
        let id = match &fingerprint {
            Some(fingerprint) => format!("urn:piwheels-rs:{role}:{}", fingerprint.trim_start_matches("SHA256:")),
            None => format!("urn:piwheels-rs:{role}:label:{}", self.label),
        };
        Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![Subject { name: self.filename.clone(), digest: sha256(&self.sha256) }],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: Provenance {
                build_definition: BuildDefinition {
                    build_type: build_type.into(),
                    external_parameters: ExternalParameters { package: self.package.clone(), version: self.version.clone(), abi: self.abi.clone() },
                    internal_parameters: InternalParameters {
                        key: self.key.clone(),
                        fingerprint,
                        label: self.label.clone(),
                        environment: self.environment.clone(),
                    },
                    resolved_dependencies: self
                        .source
                        .iter()
                        .map(|s| ResourceDescriptor { name: s.filename.clone(), uri: s.url.clone(), digest: sha256(&s.sha256) })
                        .collect(),
                },
                run_details: RunDetails {
                    builder: Builder { id },
                    metadata: BuildMetadata { invocation_id: self.build_id.to_string(), started_on: self.started, finished_on: self.finished },
                },
            },
        }
    }
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The statement's JSON, base64.
    pub payload: String,
    /// One signature: the master's.
    pub signatures: Vec<EnvelopeSignature>,
}

/// A DSSE signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id: [`key_id`].
    pub keyid: String,
    /// The ed25519 signature of the payload's PAE, base64.
    pub sig: String,
}

/// DSSE's pre-authentication encoding of a payload: what is signed.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A key's id in envelopes: the SHA-256 of its 32 bytes, lower-case hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The public key as PEM (SubjectPublicKeyInfo), as served at [`PUBLIC_KEY_FILE`].
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF).expect("an ed25519 key encodes")
}

/// A public key from its PEM.
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| format!("not an ed25519 public key in PEM: {e}"))
}

/// Signs `statement`: the envelope as one line of JSON with its newline, as written beside the
/// wheel.
pub fn sign(statement: &Statement, key: &SigningKey) -> Vec<u8> {
    let payload = serde_json::to_vec(statement).expect("a statement serializes");
    let signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    let envelope = Envelope {
        payload_type: PAYLOAD_TYPE.into(),
        payload: BASE64.encode(&payload),
        signatures: vec![EnvelopeSignature { keyid: key_id(&key.verifying_key()), sig: BASE64.encode(signature.to_bytes()) }],
    };
    let mut line = serde_json::to_vec(&envelope).expect("an envelope serializes");
    line.push(b'\n');
    line
}

/// Why an envelope does not hold a statement signed by the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// Not a DSSE envelope of an in-toto statement.
    #[error("not a signed statement: {0}")]
    Malformed(String),
    /// No signature of the key verifies.
    #[error("the statement is not signed by the key {0}")]
    OtherKey(String),
}

/// The statement in `envelope` (one line of JSON, or its file's contents), once a signature
/// of `key` over it verifies.
pub fn verify(envelope: &[u8], key: &VerifyingKey) -> Result<Statement, Unverified> {
    let malformed = |what: String| Unverified::Malformed(what);
    let first_line = envelope.split(|b| *b == b'\n').next().unwrap_or_default();
    let envelope: Envelope = serde_json::from_slice(first_line).map_err(|e| malformed(format!("not a DSSE envelope: {e}")))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(malformed(format!("its payload type is {:?}, not {PAYLOAD_TYPE}", envelope.payload_type)));
    }
    let payload = BASE64.decode(&envelope.payload).map_err(|e| malformed(format!("its payload is not base64: {e}")))?;
    let message = pae(&envelope.payload_type, &payload);
    let signed = envelope.signatures.iter().any(|s| {
        BASE64
            .decode(&s.sig)
            .ok()
            .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
            .is_some_and(|signature| key.verify_strict(&message, &signature).is_ok())
    });
    if !signed {
        return Err(Unverified::OtherKey(key_id(key)));
    }
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| malformed(format!("its payload is not an in-toto statement: {e}")))?;
    if statement.statement_type != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return Err(malformed(format!("a {} statement of {}, not SLSA provenance", statement.statement_type, statement.predicate_type)));
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn facts() -> BuildFacts {
        BuildFacts {
            filename: "foo-1.0-py3-none-any.whl".into(),
            sha256: "a".repeat(64),
            package: "foo".into(),
            version: "1.0".into(),
            abi: "cp311".into(),
            imported: false,
            source: Some(SourceFile { filename: "foo-1.0.tar.gz".into(), url: "http://index/foo-1.0.tar.gz".into(), sha256: "b".repeat(64) }),
            key: None,
            label: "pi-1".into(),
            environment: BTreeMap::from([("python".to_string(), "3.11.2".to_string())]),
            build_id: 7,
            started: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            finished: Utc.with_ymd_and_hms(2026, 1, 2, 3, 5, 6).unwrap(),
        }
    }

    #[test]
    fn a_signed_statement_verifies_with_its_key_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let envelope = sign(&facts().statement(), &key);
        assert_eq!(envelope.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        assert_eq!(verify(&envelope, &key.verifying_key()), Ok(facts().statement()));
        assert_eq!(sign(&facts().statement(), &key), envelope, "signed again, the same bytes");
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(verify(&envelope, &other), Err(Unverified::OtherKey(key_id(&other))));
        // A payload changed after signing.
        let mut parsed: Envelope = serde_json::from_slice(&envelope).unwrap();
        let mut statement = facts().statement();
        statement.subject[0].digest.insert("sha256".into(), "c".repeat(64));
        parsed.payload = BASE64.encode(serde_json::to_vec(&statement).unwrap());
        assert!(matches!(verify(&serde_json::to_vec(&parsed).unwrap(), &key.verifying_key()), Err(Unverified::OtherKey(_))));
        assert!(matches!(verify(b"{}", &key.verifying_key()), Err(Unverified::Malformed(_))));
    }

    #[test]
    fn the_statement_uses_the_in_toto_and_slsa_field_names() {
        let json: serde_json::Value = serde_json::to_value(facts().statement()).unwrap();
        assert_eq!(json["_type"], STATEMENT_TYPE);
        assert_eq!(json["predicateType"], PREDICATE_TYPE);
        assert_eq!(json["subject"][0]["digest"]["sha256"], "a".repeat(64));
        let predicate = &json["predicate"];
        assert_eq!(predicate["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(predicate["buildDefinition"]["externalParameters"]["abi"], "cp311");
        assert_eq!(predicate["buildDefinition"]["resolvedDependencies"][0]["uri"], "http://index/foo-1.0.tar.gz");
        assert_eq!(predicate["runDetails"]["builder"]["id"], "urn:piwheels-rs:builder:label:pi-1");
        assert_eq!(predicate["runDetails"]["metadata"]["invocationId"], "7");
        assert_eq!(predicate["runDetails"]["metadata"]["startedOn"], "2026-01-02T03:04:05Z");
        assert_eq!(predicate["runDetails"]["metadata"]["finishedOn"], "2026-01-02T03:05:06Z");
    }

    #[test]
    fn the_public_key_round_trips_through_pem() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let pem = public_key_pem(&key);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(parse_public_key(&pem), Ok(key));
        assert!(parse_public_key("nonsense").is_err());
    }
}
