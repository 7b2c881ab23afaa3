//! What a release's dependencies resolve to on the farm's ABIs, as the index's JSON API knows
//! them: the work of `piw-add --with-deps` before it registers anything.
//!
//! For each ABI the farm builds (cp311 is CPython 3.11 on Linux), the release's `requires_dist`
//! (from `{json}/{name}/{version}/json`) is read and each requirement's environment marker
//! evaluated, with the extras the requirement chain asked for. A requirement that applies is
//! met by a release this ABI has taken already when one satisfies it (so a cycle leads back to
//! the named release instead of adding another version of it); otherwise by the newest release
//! in the project's document (`{json}/{name}/json`) that satisfies its specifier, has files,
//! is not yanked (unless the specifier pins it with `==` or `===`, as PEP 592 lets installers
//! do), is not a pre-release (unless the specifier names one) and whose `Requires-Python`
//! admits the ABI's Python. Its own requirements are then followed the same way.
//!
//! This is not an installer's resolver: each requirement is met on its own, without
//! backtracking, so two requirements of one project may pull in two of its versions, both
//! added. For a build farm that errs on the side of building more.
//!
//! The index is another party: every document is read within a size bound, requirements
//! within a count and a length, and a resolution within a number of releases, a depth and a
//! number of documents ([`Limits`]). A bound hit on one document or one release leaves that
//! part unresolved, with the reason; a bound on the whole stops the resolution, and nothing is
//! added. Text from the index is shown with its control characters replaced.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use pep440_rs::{Operator, Version, VersionSpecifiers};
use pep508_rs::{ExtraName, MarkerEnvironment, MarkerEnvironmentBuilder, Requirement, VersionOrUrl};
use piwheels_common::inspect::split_requirement;
use piwheels_common::names::canonicalize;

mod index;

pub use index::{DocumentError, JsonIndex, MAX_PROJECT_DOCUMENT, MAX_RELEASE_DOCUMENT, MAX_VERSIONS};
use index::{Candidate, Project};

/// What `platform_machine` is taken to be on the farm's builders: Raspberry Pi OS reports
/// `armv7l` (32-bit) or `aarch64` (64-bit). A requirement applies to an ABI when its marker
/// holds on either.
pub const MACHINES: [&str; 2] = ["armv7l", "aarch64"];
/// Most requirements a release may list; a release with more has none followed.
pub const MAX_REQUIREMENTS: usize = 2_000;
/// Longest requirement read, in characters.
pub const MAX_REQUIREMENT: usize = 1_000;
/// Most things listed as not resolved; the list says so when it stops there.
pub const MAX_UNRESOLVED: usize = 500;
/// Documents that may be read per release allowed (each release costs two; requirements that
/// cannot be met cost one each).
const DOCUMENTS_PER_RELEASE: usize = 10;

/// The bounds of one resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most releases added, the one asked for included (`--max-releases`).
    pub releases: usize,
    /// Most levels of dependencies followed below the release asked for (`--max-depth`).
    pub depth: usize,
    /// Most documents read from the index: [`DOCUMENTS_PER_RELEASE`] per release allowed.
    pub documents: usize,
}

impl Limits {
    /// The bounds for at most `releases` releases, `depth` levels deep.
    pub fn new(releases: usize, depth: usize) -> Limits {
        Limits { releases, depth, documents: releases.saturating_mul(DOCUMENTS_PER_RELEASE) }
    }
}

/// Why a resolution stopped: nothing is added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The release asked for cannot be read from the index.
    #[error("cannot read {release} from the index: {reason}; nothing was added")]
    Root {
        /// `name version`.
        release: String,
        /// Why.
        reason: DocumentError,
    },
    /// The master named no ABI to resolve for.
    #[error("the farm builds for no ABI (build_abis is empty, or every ABI in it is skipped): there is nothing to resolve dependencies for; nothing was added")]
    NoAbis,
    /// More releases than [`Limits::releases`].
    #[error("the dependencies need more than {limit} releases ({next} would be one more); nothing was added: raise --max-releases, or add the releases one by one")]
    TooManyReleases {
        /// The bound.
        limit: usize,
        /// The release that would have gone over it, and why it was wanted.
        next: String,
    },
    /// A chain of requirements deeper than [`Limits::depth`].
    #[error("the dependencies go deeper than {limit} levels ({chain}); nothing was added: raise --max-depth, or add the releases one by one")]
    TooDeep {
        /// The bound.
        limit: usize,
        /// The chain, `a 1.0 → b 2.0 → ...`.
        chain: String,
    },
    /// More documents read than [`Limits::documents`].
    #[error("read {limit} documents from the index without finishing; nothing was added: raise --max-releases")]
    TooManyDocuments {
        /// The bound.
        limit: usize,
    },
}

/// Text from the index as it may be shown: control characters replaced, at most `max`
/// characters.
fn shown(text: &str, max: usize) -> String {
    let mut out: String = text.trim().chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.trim().chars().count() > max {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The farm's ABIs

/// A farm ABI as environment markers see it.
#[derive(Debug)]
struct Target {
    python: Version,
    /// One per machine of [`MACHINES`].
    environments: Vec<MarkerEnvironment>,
}

/// The marker environments of a CPython ABI tag (`cp311`, `cp39`, `cp313t`): CPython X.Y on
/// Linux, on each of [`MACHINES`]. `python_full_version` is X.Y.0, since the tag names no
/// patch release. None for a tag that names no CPython version.
fn target(tag: &str) -> Option<Target> {
    let digits: String = tag.strip_prefix("cp")?.chars().take_while(char::is_ascii_digit).collect();
    if !(2..=3).contains(&digits.len()) {
        return None;
    }
    let (major, minor) = digits.split_at(1);
    let python_version = format!("{major}.{}", minor.parse::<u32>().ok()?);
    let full = format!("{python_version}.0");
    let environments = MACHINES
        .iter()
        .map(|machine| {
            MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
                implementation_name: "cpython",
                implementation_version: &full,
                os_name: "posix",
                platform_machine: machine,
                platform_python_implementation: "CPython",
                platform_release: "",
                platform_system: "Linux",
                platform_version: "",
                python_full_version: &full,
                python_version: &python_version,
                sys_platform: "linux",
            })
            .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Target { python: Version::from_str(&python_version).ok()?, environments })
}

// ---------------------------------------------------------------------------------------------
// Resolution

/// A release to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The project's name as the index displays it (the name as typed, for the release asked
    /// for).
    pub name: String,
    /// The version as the index spells it.
    pub version: String,
    /// Why; empty for the release asked for.
    pub reasons: Vec<Reason>,
}

/// A requirement that pulled a release in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The release that requires it, `name version`.
    pub by: String,
    /// The requirement, as the index gave it.
    pub requirement: String,
    /// The ABIs it was pulled in for, in the farm's order.
    pub abis: Vec<String>,
}

/// Something that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// What: a requirement and the release that has it, or a release.
    pub what: String,
    /// The ABIs it concerns, in the farm's order.
    pub abis: Vec<String>,
    /// Why.
    pub why: String,
}

/// The outcome of a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Releases to add, the one asked for first, then in the order they were found.
    pub added: Vec<Added>,
    /// What could not be resolved, in the order it was met, at most [`MAX_UNRESOLVED`].
    pub unresolved: Vec<Unresolved>,
    /// More could not be resolved than [`MAX_UNRESOLVED`].
    pub unresolved_cut: bool,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "required by {} ({}) for {}", self.by, self.requirement, self.abis.join(", "))
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, for {}: {}", self.what, self.abis.join(", "), self.why)
    }
}

/// Resolves the dependencies of `name` `version` for the farm's `abis` from `index`.
pub fn resolve(index: &mut JsonIndex, name: &str, version: &str, abis: &[String], limits: &Limits) -> Result<Resolution, ResolveError> {
    if abis.is_empty() {
        return Err(ResolveError::NoAbis);
    }
    let mut resolver = Resolver {
        index,
        limits: *limits,
        abis: abis.to_vec(),
        targets: abis.iter().map(|abi| target(abi).map(Rc::new)).collect(),
        releases: Vec::new(),
        found: HashMap::new(),
        unresolved: Vec::new(),
        unresolved_at: HashMap::new(),
        unresolved_cut: false,
        taken: (0..abis.len()).map(|_| HashMap::new()).collect(),
        expanded: (0..abis.len()).map(|_| HashMap::new()).collect(),
        queue: VecDeque::new(),
    };
    resolver.start(name, version)?;
    while let Some(visit) = resolver.queue.pop_front() {
        resolver.visit(&visit)?;
    }
    Ok(resolver.finish())
}

/// A release found, with what is known of it while resolving.
#[derive(Debug)]
struct Found {
    name: String,
    canonical: String,
    text: String,
    /// None for a release asked for whose version PEP 440 cannot read.
    version: Option<Version>,
    /// The release that first pulled it in.
    parent: Option<usize>,
    /// (requiring release, requirement, ABIs).
    reasons: Vec<(usize, String, BTreeSet<usize>)>,
    /// Its requirements, parsed once: each a requirement or its text and why it cannot be read.
    requirements: Option<Result<Rc<Vec<Parsed>>, String>>,
}

type Parsed = Result<(Requirement, String), (String, String)>;

/// A release's requirements to follow for an ABI, with these extras.
#[derive(Debug)]
struct Visit {
    abi: usize,
    release: usize,
    extras: BTreeSet<ExtraName>,
    depth: usize,
}

struct Resolver<'i> {
    index: &'i mut JsonIndex,
    limits: Limits,
    abis: Vec<String>,
    /// Per ABI: how markers see it; None when its tag names no CPython version.
    targets: Vec<Option<Rc<Target>>>,
    releases: Vec<Found>,
    /// (canonical name, version text) → index in `releases`.
    found: HashMap<(String, String), usize>,
    /// (what, why, ABIs).
    unresolved: Vec<(String, String, BTreeSet<usize>)>,
    /// (what, why) → index in `unresolved`.
    unresolved_at: HashMap<(String, String), usize>,
    /// Something was left out of `unresolved` for want of room.
    unresolved_cut: bool,
    /// Per ABI: the releases taken for each project (canonical name).
    taken: Vec<HashMap<String, Vec<usize>>>,
    /// Per ABI: the extras each release's requirements were followed with.
    expanded: Vec<HashMap<usize, BTreeSet<ExtraName>>>,
    queue: VecDeque<Visit>,
}

impl Resolver<'_> {
    fn label(&self, release: usize) -> String {
        let found = &self.releases[release];
        format!("{} {}", found.name, found.text)
    }

    fn unresolved(&mut self, what: String, abi: usize, why: String) {
        let key = (what, why);
        if let Some(&at) = self.unresolved_at.get(&key) {
            self.unresolved[at].2.insert(abi);
        } else if self.unresolved.len() < MAX_UNRESOLVED {
            self.unresolved_at.insert(key.clone(), self.unresolved.len());
            self.unresolved.push((key.0, key.1, BTreeSet::from([abi])));
        } else {
            self.unresolved_cut = true;
        }
    }

    /// The release asked for: read at once (nothing is resolved without it), taken for every
    /// ABI its `Requires-Python` admits.
    fn start(&mut self, name: &str, version: &str) -> Result<(), ResolveError> {
        let canonical = canonicalize(name);
        let label = format!("{name} {version}");
        let needs = self.index.release(&canonical, version)?.map_err(|reason| ResolveError::Root { release: label.clone(), reason })?;
        let requires_python = needs.requires_python.as_deref().and_then(|text| VersionSpecifiers::from_str(text).ok());
        self.releases.push(Found {
            name: name.to_string(),
            canonical: canonical.clone(),
            text: version.to_string(),
            version: Version::from_str(version).ok(),
            parent: None,
            reasons: Vec::new(),
            requirements: None,
        });
        self.found.insert((canonical.clone(), version.to_string()), 0);
        for abi in 0..self.abis.len() {
            let Some(target) = self.targets[abi].clone() else {
                let why = format!("cannot tell which Python the ABI {} is, so its dependencies are not followed", self.abis[abi]);
                self.unresolved(label.clone(), abi, why);
                continue;
            };
            if let Some(spec) = requires_python.as_ref().filter(|spec| !spec.contains(&target.python)) {
                let why = format!("it requires Python {spec}, which {} is not, so its dependencies are not followed", target.python);
                self.unresolved(label.clone(), abi, why);
                continue;
            }
            self.taken[abi].insert(canonical.clone(), vec![0]);
            self.expanded[abi].insert(0, BTreeSet::new());
            self.queue.push_back(Visit { abi, release: 0, extras: BTreeSet::new(), depth: 0 });
        }
        Ok(())
    }

    /// A release's requirements, read and parsed once.
    fn requirements(&mut self, release: usize) -> Result<Result<Rc<Vec<Parsed>>, String>, ResolveError> {
        if let Some(known) = &self.releases[release].requirements {
            return Ok(known.clone());
        }
        let (canonical, text) = (self.releases[release].canonical.clone(), self.releases[release].text.clone());
        let parsed = match self.index.release(&canonical, &text)? {
            Err(e) => Err(format!("its requirements cannot be read ({e}), so they are not followed")),
            Ok(needs) if needs.requires_dist.len() > MAX_REQUIREMENTS => Err(format!(
                "it lists {} requirements, more than {MAX_REQUIREMENTS}, so none is followed",
                needs.requires_dist.len()
            )),
            Ok(needs) => Ok(Rc::new(needs.requires_dist.iter().map(|text| parse(text)).collect())),
        };
        self.releases[release].requirements = Some(parsed.clone());
        Ok(parsed)
    }

    fn visit(&mut self, visit: &Visit) -> Result<(), ResolveError> {
        let requirements = match self.requirements(visit.release)? {
            Ok(requirements) => requirements,
            Err(why) => {
                let what = self.label(visit.release);
                self.unresolved(what, visit.abi, why);
                return Ok(());
            }
        };
        let Some(target) = self.targets[visit.abi].clone() else { return Ok(()) };
        let extras: Vec<ExtraName> = visit.extras.iter().cloned().collect();
        for parsed in requirements.iter() {
            match parsed {
                Err((text, why)) => {
                    let what = format!("{text} (required by {})", self.label(visit.release));
                    self.unresolved(what, visit.abi, why.clone());
                }
                Ok((requirement, text)) => {
                    if target.environments.iter().any(|environment| requirement.evaluate_markers(environment, &extras)) {
                        self.follow(visit, &target, requirement, text)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Meets a requirement that applies to the visit's ABI, and queues the requirements of
    /// the release that meets it.
    fn follow(&mut self, visit: &Visit, target: &Target, requirement: &Requirement, text: &str) -> Result<(), ResolveError> {
        let what = format!("{text} (required by {})", self.label(visit.release));
        let specifiers = match &requirement.version_or_url {
            None => VersionSpecifiers::empty(),
            Some(VersionOrUrl::VersionSpecifier(specifiers)) => specifiers.clone(),
            Some(VersionOrUrl::Url(_)) => {
                self.unresolved(what, visit.abi, "it names a URL, not a release of the index".into());
                return Ok(());
            }
        };
        let canonical = canonicalize(requirement.name.as_ref());
        let taken = self.taken[visit.abi].get(&canonical).and_then(|taken| {
            taken
                .iter()
                .copied()
                .filter_map(|i| self.releases[i].version.as_ref().filter(|v| specifiers.contains(v)).map(|v| (v, i)))
                .max_by(|a, b| a.0.cmp(b.0))
                .map(|(_, i)| i)
        });
        let release = match taken {
            Some(release) => release,
            None => {
                let project = match self.index.project(&canonical)? {
                    Ok(project) => project,
                    Err(e) => {
                        self.unresolved(what, visit.abi, format!("cannot read the releases of {canonical}: {e}"));
                        return Ok(());
                    }
                };
                let candidate = match pick(&project, &specifiers, &target.python) {
                    Ok(candidate) => candidate.clone(),
                    Err(why) => {
                        self.unresolved(what, visit.abi, why);
                        return Ok(());
                    }
                };
                self.add(&project.name, &canonical, candidate, visit, text)?
            }
        };
        let taken = self.taken[visit.abi].entry(canonical).or_default();
        if !taken.contains(&release) {
            taken.push(release);
        }
        self.reason(release, visit, text);
        let wanted: BTreeSet<ExtraName> = requirement.extras.iter().cloned().collect();
        let done = self.expanded[visit.abi].get(&release);
        if done.is_some_and(|done| wanted.is_subset(done)) {
            return Ok(());
        }
        let extras: BTreeSet<ExtraName> = done.into_iter().flatten().cloned().chain(wanted).collect();
        let depth = visit.depth + 1;
        if depth > self.limits.depth {
            return Err(ResolveError::TooDeep { limit: self.limits.depth, chain: self.chain(release) });
        }
        self.expanded[visit.abi].insert(release, extras.clone());
        self.queue.push_back(Visit { abi: visit.abi, release, extras, depth });
        Ok(())
    }

    /// The release of `candidate`, added unless it was found already.
    fn add(&mut self, name: &str, canonical: &str, candidate: Candidate, visit: &Visit, text: &str) -> Result<usize, ResolveError> {
        if let Some(&known) = self.found.get(&(canonical.to_string(), candidate.text.clone())) {
            return Ok(known);
        }
        if self.releases.len() >= self.limits.releases {
            let next = format!("{name} {}, required by {} ({text})", candidate.text, self.label(visit.release));
            return Err(ResolveError::TooManyReleases { limit: self.limits.releases, next });
        }
        let release = self.releases.len();
        self.found.insert((canonical.to_string(), candidate.text.clone()), release);
        self.releases.push(Found {
            name: name.to_string(),
            canonical: canonical.to_string(),
            text: candidate.text,
            version: Some(candidate.version),
            parent: Some(visit.release),
            reasons: Vec::new(),
            requirements: None,
        });
        Ok(release)
    }

    fn reason(&mut self, release: usize, visit: &Visit, text: &str) {
        let reasons = &mut self.releases[release].reasons;
        match reasons.iter_mut().find(|(by, requirement, _)| *by == visit.release && requirement == text) {
            Some((_, _, abis)) => {
                abis.insert(visit.abi);
            }
            None => reasons.push((visit.release, text.to_string(), BTreeSet::from([visit.abi]))),
        }
    }

    /// `a 1.0 → b 2.0 → ... → release`, by the releases that first pulled each in.
    fn chain(&self, release: usize) -> String {
        let mut chain = vec![self.label(release)];
        let mut at = self.releases[release].parent;
        while let Some(parent) = at {
            chain.push(self.label(parent));
            at = self.releases[parent].parent;
            if chain.len() > self.releases.len() {
                break;
            }
        }
        chain.reverse();
        chain.join(" → ")
    }

    fn finish(self) -> Resolution {
        let tags = |abis: &BTreeSet<usize>| abis.iter().map(|&abi| self.abis[abi].clone()).collect::<Vec<_>>();
        let added = self
            .releases
            .iter()
            .map(|found| Added {
                name: found.name.clone(),
                version: found.text.clone(),
                reasons: found
                    .reasons
                    .iter()
                    .map(|(by, requirement, abis)| Reason { by: self.label(*by), requirement: requirement.clone(), abis: tags(abis) })
                    .collect(),
            })
            .collect();
        let unresolved = self.unresolved.iter().map(|(what, why, abis)| Unresolved { what: what.clone(), abis: tags(abis), why: why.clone() }).collect();
        Resolution { added, unresolved, unresolved_cut: self.unresolved_cut }
    }
}

/// A requirement from the index, with its text as it may be shown; or that text and why it
/// cannot be read.
///
/// pep508_rs 0.9 panics on a name or an extra that ends in `-`, `_` or `.` and is followed by
/// more text (`bad-(`): those are refused here first, and a panic on anything else the index
/// sends is caught and taken as a requirement that cannot be read.
fn parse(text: &str) -> Parsed {
    let shown_text = shown(text, 200);
    if text.chars().count() > MAX_REQUIREMENT {
        return Err((shown_text, format!("it is longer than {MAX_REQUIREMENT} characters")));
    }
    if !names_are_valid(text) {
        return Err((shown_text, "it is not a PEP 508 requirement: its project name or an extra is not valid".into()));
    }
    match std::panic::catch_unwind(|| Requirement::from_str(text)) {
        Ok(Ok(requirement)) => Ok((requirement, shown_text)),
        Ok(Err(e)) => Err((shown_text, format!("it is not a PEP 508 requirement: {}", shown(&e.message.to_string(), 200)))),
        Err(_) => Err((shown_text, "it is not a PEP 508 requirement: the parser gave up on it".into())),
    }
}

/// Whether a requirement starts with a valid project name and, if it has extras, each is a
/// valid name too.
fn names_are_valid(text: &str) -> bool {
    let Some((_, rest)) = split_requirement(text) else { return false };
    let Some(extras) = rest.strip_prefix('[') else { return true };
    let ends_well = |extra: &str| extra.starts_with(|c: char| c.is_ascii_alphanumeric()) && extra.ends_with(|c: char| c.is_ascii_alphanumeric());
    extras.split(']').next().unwrap_or_default().split(',').map(str::trim).all(|extra| extra.is_empty() || ends_well(extra))
}

/// The newest release of `project` that meets `specifiers` on `python`; or why there is none.
fn pick<'p>(project: &'p Project, specifiers: &VersionSpecifiers, python: &Version) -> Result<&'p Candidate, String> {
    let pre_releases = specifiers.iter().any(|specifier| specifier.any_prerelease());
    let pinned = matches!(&specifiers[..], [only] if matches!(only.operator(), Operator::Equal | Operator::ExactEqual));
    let mut left_out = Vec::new();
    for candidate in project.candidates.iter().filter(|candidate| specifiers.contains(&candidate.version)) {
        let why_not = if candidate.version.any_prerelease() && !pre_releases {
            Some("is a pre-release".to_string())
        } else if candidate.yanked && !pinned {
            Some("is yanked".to_string())
        } else {
            candidate.requires_python.as_ref().filter(|spec| !spec.contains(python)).map(|spec| format!("requires Python {spec}"))
        };
        match why_not {
            None => return Ok(candidate),
            Some(why) => left_out.push(format!("{} {why}", candidate.text)),
        }
    }
    let wanted = if specifiers.is_empty() { "any version".to_string() } else { shown(&specifiers.to_string(), 200) };
    if left_out.is_empty() {
        return Err(format!("no release of {} satisfies {wanted}", project.name));
    }
    let more = left_out.len().saturating_sub(3);
    left_out.truncate(3);
    let mut why = format!("no release of {} that satisfies {wanted} will do for Python {python}: {}", project.name, left_out.join("; "));
    if more > 0 {
        why.push_str(&format!("; and {more} more"));
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_testsupport::pypi::FakePypi;

    fn candidate(text: &str, yanked: bool, requires_python: Option<&str>) -> Candidate {
        Candidate {
            version: Version::from_str(text).unwrap(),
            text: text.into(),
            yanked,
            requires_python: requires_python.map(|spec| VersionSpecifiers::from_str(spec).unwrap()),
        }
    }

    fn spec(text: &str) -> VersionSpecifiers {
        VersionSpecifiers::from_str(text).unwrap()
    }

    #[test]
    fn abi_tags_are_read_as_cpython_versions() {
        for (tag, python) in [("cp311", "3.11"), ("cp39", "3.9"), ("cp313t", "3.13"), ("cp37m", "3.7")] {
            let target = target(tag).unwrap_or_else(|| panic!("{tag}"));
            assert_eq!(target.python, Version::from_str(python).unwrap(), "{tag}");
            assert_eq!(target.environments.len(), MACHINES.len());
        }
        for tag in ["abi3", "none", "pp39", "cp3", "cp", "cp3111"] {
            assert!(target(tag).is_none(), "{tag}");
        }
    }

    #[test]
    fn markers_see_cpython_on_a_raspberry_pi() {
        let cp39 = target("cp39").unwrap();
        let holds = |text: &str| {
            let requirement: Requirement = text.parse().unwrap();
            cp39.environments.iter().map(|environment| requirement.evaluate_markers(environment, &[])).collect::<Vec<_>>()
        };
        assert_eq!(holds("x; python_version < '3.10'"), [true, true]);
        assert_eq!(holds("x; python_full_version >= '3.9.1'"), [false, false], "X.Y.0: the tag names no patch release");
        assert_eq!(holds("x; sys_platform == 'linux' and os_name == 'posix' and implementation_name == 'cpython'"), [true, true]);
        assert_eq!(holds("x; platform_machine == 'aarch64'"), [false, true]);
        assert_eq!(holds("x; sys_platform == 'win32'"), [false, false]);
        assert_eq!(holds("x; extra == 'docs'"), [false, false], "no extra unless asked for");
    }

    #[test]
    fn the_newest_usable_release_is_picked_and_the_others_are_said() {
        let project = Project {
            name: "Lib".into(),
            candidates: vec![
                candidate("3.0rc1", false, None),
                candidate("2.1", true, None),
                candidate("2.0", false, Some(">=3.10")),
                candidate("1.0", false, Some(">=3.8")),
                candidate("0.9", false, None),
            ],
        };
        let py = |text: &str| Version::from_str(text).unwrap();
        let picked = |specifiers: &str, python: &str| {
            let specifiers = if specifiers.is_empty() { VersionSpecifiers::empty() } else { spec(specifiers) };
            pick(&project, &specifiers, &py(python)).map(|c| c.text.clone())
        };
        assert_eq!(picked(">=1", "3.11"), Ok("2.0".into()));
        assert_eq!(picked(">=1", "3.9"), Ok("1.0".into()));
        // A specifier naming a pre-release admits pre-releases; an exact pin admits a yanked release.
        assert_eq!(picked(">=3.0rc1", "3.11"), Ok("3.0rc1".into()));
        assert_eq!(picked("==2.1", "3.9"), Ok("2.1".into()));
        assert_eq!(picked("", "3.9"), Ok("1.0".into()));
        let why = picked(">=2", "3.9").unwrap_err();
        assert_eq!(why, "no release of Lib that satisfies >=2 will do for Python 3.9: 3.0rc1 is a pre-release; 2.1 is yanked; 2.0 requires Python >=3.10");
        assert_eq!(picked(">=4", "3.11").unwrap_err(), "no release of Lib satisfies >=4");
    }

    #[test]
    fn no_short_requirement_makes_the_parser_panic() {
        // Every string of a name's first letter and up to four characters of this alphabet
        // must be parsed or refused by `parse`'s checks, never left to the parser's panic.
        let alphabet: Vec<char> = "a1-_.[],();=>' @".chars().collect();
        let mut texts = vec!["a".to_string()];
        let mut last = texts.clone();
        for _ in 0..4 {
            last = last.iter().flat_map(|text| alphabet.iter().map(move |c| format!("{text}{c}"))).collect();
            texts.extend(last.iter().cloned());
        }
        let panicked: Vec<&String> = texts
            .iter()
            .filter(|text| names_are_valid(text) && std::panic::catch_unwind(|| Requirement::<pep508_rs::VerbatimUrl>::from_str(text)).is_err())
            .collect();
        assert!(panicked.is_empty(), "{panicked:?}");
    }


    fn resolve_on(pypi: &FakePypi, abis: &[&str], limits: Limits) -> Result<Resolution, ResolveError> {
        let mut index = JsonIndex::new(&pypi.json_url(), limits.documents).unwrap();
        let abis: Vec<String> = abis.iter().map(|abi| abi.to_string()).collect();
        resolve(&mut index, "app", "1.0", &abis, &limits)
    }

    fn added(resolution: &Resolution) -> Vec<String> {
        resolution.added.iter().map(|added| format!("{} {}", added.name, added.version)).collect()
    }

    #[test]
    fn a_chain_deeper_than_the_bound_stops_with_the_chain() {
        let pypi = FakePypi::holding(&[("app", "1.0", None, &["a"]), ("a", "1.0", None, &["b"]), ("b", "1.0", None, &["c"]), ("c", "1.0", None, &[])]);
        assert_eq!(added(&resolve_on(&pypi, &["cp311"], Limits::new(10, 3)).unwrap()), ["app 1.0", "a 1.0", "b 1.0", "c 1.0"]);
        let error = resolve_on(&pypi, &["cp311"], Limits::new(10, 2)).unwrap_err();
        assert_eq!(error, ResolveError::TooDeep { limit: 2, chain: "app 1.0 → a 1.0 → b 1.0 → c 1.0".into() });
        let error = resolve_on(&pypi, &["cp311"], Limits::new(3, 10)).unwrap_err();
        assert!(matches!(&error, ResolveError::TooManyReleases { limit: 3, next } if next == "c 1.0, required by b 1.0 (c)"), "{error}");
        let error = resolve_on(&pypi, &["cp311"], Limits { releases: 10, depth: 10, documents: 4 }).unwrap_err();
        assert_eq!(error, ResolveError::TooManyDocuments { limit: 4 });
    }

    #[test]
    fn what_cannot_be_read_is_said_and_the_rest_resolved() {
        let long = format!("x{}", ">=1,".repeat(300));
        let many: Vec<String> = (0..=MAX_REQUIREMENTS).map(|i| format!("dep{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let pypi = FakePypi::holding(&[
            ("app", "1.0", None, &["ok", "missing>=1", "bad-(", "ok[fast-]>=1", &long, "direct @ https://example.invalid/direct-1.0.tar.gz", "crowded", "huge", "ok\u{1b}[31m"]),
            ("ok", "1.0", None, &[]),
            ("crowded", "1.0", None, &many),
            ("huge", "1.0", None, &[]),
        ]);
        // A release document over its bound: a description of 9 MiB.
        pypi.set_summary("huge", Some(&"h".repeat(9 << 20)));
        let resolution = resolve_on(&pypi, &["cp39", "cp311"], Limits::new(10, 5)).unwrap();
        assert_eq!(added(&resolution), ["app 1.0", "ok 1.0", "crowded 1.0", "huge 1.0"]);
        let unresolved: Vec<String> = resolution.unresolved.iter().map(ToString::to_string).collect();
        let expected = [
            "missing>=1 (required by app 1.0), for cp39, cp311: cannot read the releases of missing: the index does not know it".to_string(),
            "bad-( (required by app 1.0), for cp39, cp311: it is not a PEP 508 requirement: its project name or an extra is not valid".to_string(),
            "ok[fast-]>=1 (required by app 1.0), for cp39, cp311: it is not a PEP 508 requirement: its project name or an extra is not valid".to_string(),
            format!("{} (required by app 1.0), for cp39, cp311: it is longer than {MAX_REQUIREMENT} characters", shown(&long, 200)),
            "direct @ https://example.invalid/direct-1.0.tar.gz (required by app 1.0), for cp39, cp311: it names a URL, not a release of the index".to_string(),
            "ok?[31m (required by app 1.0), for cp39, cp311: it is not a PEP 508 requirement: ".to_string(),
            format!("crowded 1.0, for cp39, cp311: it lists {} requirements, more than {MAX_REQUIREMENTS}, so none is followed", MAX_REQUIREMENTS + 1),
            "huge 1.0, for cp39, cp311: its requirements cannot be read (the document is larger than 8 MiB), so they are not followed".to_string(),
        ];
        assert_eq!(unresolved.len(), expected.len(), "{unresolved:#?}");
        for (found, expected) in unresolved.iter().zip(expected) {
            assert!(found.starts_with(expected.as_str()), "{found:?} does not start with {expected:?}");
        }
        assert!(unresolved.iter().all(|line| !line.contains('\u{1b}')));
    }

    #[test]
    fn the_list_of_what_is_not_resolved_stops_at_its_bound() {
        let bad: Vec<String> = (0..=MAX_UNRESOLVED).map(|i| format!("bad{i}-(")).collect();
        let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
        let pypi = FakePypi::holding(&[("app", "1.0", None, &bad)]);
        let resolution = resolve_on(&pypi, &["cp39", "cp311"], Limits::new(10, 5)).unwrap();
        assert_eq!(resolution.unresolved.len(), MAX_UNRESOLVED);
        assert!(resolution.unresolved_cut);
        assert!(resolution.unresolved.iter().all(|unresolved| unresolved.abis == ["cp39", "cp311"]));
    }

    #[test]
    fn an_abi_the_release_does_not_admit_or_cannot_be_read_is_said() {
        let pypi = FakePypi::holding(&[("app", "1.0", Some(">=3.10"), &["dep"]), ("dep", "1.0", None, &[])]);
        let resolution = resolve_on(&pypi, &["cp39", "cp311", "pp310"], Limits::new(10, 5)).unwrap();
        assert_eq!(added(&resolution), ["app 1.0", "dep 1.0"]);
        assert_eq!(resolution.added[1].reasons, [Reason { by: "app 1.0".into(), requirement: "dep".into(), abis: vec!["cp311".into()] }]);
        let unresolved: Vec<String> = resolution.unresolved.iter().map(ToString::to_string).collect();
        assert_eq!(
            unresolved,
            [
                "app 1.0, for cp39: it requires Python >=3.10, which 3.9 is not, so its dependencies are not followed",
                "app 1.0, for pp310: cannot tell which Python the ABI pp310 is, so its dependencies are not followed",
            ]
        );
        let error = resolve_on(&pypi, &[], Limits::new(10, 5)).unwrap_err();
        assert_eq!(error, ResolveError::NoAbis);
        let mut index = JsonIndex::new(&pypi.json_url(), 10).unwrap();
        let error = resolve(&mut index, "app", "9.9", &["cp311".into()], &Limits::new(10, 5)).unwrap_err();
        assert_eq!(error, ResolveError::Root { release: "app 9.9".into(), reason: DocumentError::NotFound });
    }
}
