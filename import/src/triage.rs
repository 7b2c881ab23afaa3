//! piw-triage: the report of why the farm's releases failed, ranked, and the re-queue of the
//! releases one cause failed, after a fix (a Debian package installed on the builders, a
//! network restored).

use piwheels_common::protocols::{AdminReply, AdminRequest, RequeueRequest, TriageReport};

use crate::ToolError;
use crate::config::{TriageCommand, TriageConfig};
use crate::prompt::confirm;
use crate::session::Session;

/// Runs piw-triage; prints the report, or what was queued.
pub fn run(cfg: &TriageConfig) -> Result<(), ToolError> {
    match &cfg.command {
        TriageCommand::Report { abi } => {
            let session = Session::connect(&cfg.connect, "piw-triage")?;
            match session.request(&AdminRequest::Triage { abi: abi.clone() })? {
                AdminReply::Triage(report) => {
                    let longest = report.classes.len().max(report.debian_packages.len()).max(report.causes.len());
                    if longest > TriageReport::MAX_ROWS {
                        return Err(ToolError::Failed(format!(
                            "the master's report has a list of {longest} rows, more than the {} a report holds",
                            TriageReport::MAX_ROWS
                        )));
                    }
                    print!("{}", render(&report));
                    Ok(())
                }
                AdminReply::Error(error) => Err(error.into()),
                other => Err(ToolError::Failed(format!("unexpected answer from the master: {other:?}"))),
            }
        }
        TriageCommand::Requeue { class, detail, debian_package, abi, dry_run, yes } => {
            if class.is_none() && debian_package.is_none() {
                return Err(ToolError::Usage("name a failure CLASS or a --debian-package: every failed release at once is not re-queued".into()));
            }
            if detail.is_some() && class.is_none() {
                return Err(ToolError::Usage("--detail needs the failure CLASS it belongs to".into()));
            }
            let request = |dry_run| {
                AdminRequest::Requeue(RequeueRequest {
                    class: *class,
                    detail: detail.clone(),
                    debian_package: debian_package.clone(),
                    abi: abi.clone(),
                    dry_run,
                })
            };
            let session = Session::connect(&cfg.connect, "piw-triage")?;
            let preview = session.done(&request(true))?;
            println!("{preview}");
            if *dry_run || preview.starts_with("no failed release") {
                return Ok(());
            }
            confirm("Queue them again?", *yes)?;
            println!("{}", session.done(&request(false))?);
            Ok(())
        }
    }
}

/// The report as text.
fn render(report: &TriageReport) -> String {
    let mut out = String::new();
    if report.classes.is_empty() {
        out.push_str("No failed release waits: every latest build succeeded, or is queued again.\n");
    } else {
        out.push_str("Failed releases by class (each release counted on its latest build on each ABI):\n");
        for (class, releases) in &report.classes {
            out.push_str(&format!("  {releases:>7}  {}\n", class.name()));
        }
    }
    if !report.debian_packages.is_empty() {
        out.push_str("\nDebian packages that would cure failures (install them on the builders, then re-queue):\n");
        for (package, releases) in &report.debian_packages {
            out.push_str(&format!(
                "  installing {package} would let {releases} failed release(s) be retried: piw-triage requeue --debian-package {package}\n"
            ));
        }
    }
    if !report.causes.is_empty() {
        out.push_str("\nFailed releases by cause:\n");
        for (class, detail, package, releases) in &report.causes {
            let package = match package {
                Some(package) => format!("  (Debian package {package})"),
                None if class.has_debian_package() && report.contents => "  (no Debian package ships it)".into(),
                None => String::new(),
            };
            out.push_str(&format!("  {releases:>7}  {}{package}\n", class.describe(detail)));
        }
    }
    if report.untriaged > 0 {
        out.push_str(&format!("\n{} failed build(s) are still to be read by the triage.\n", report.untriaged));
    }
    if !report.contents {
        out.push_str("\nThe master has no Debian Contents index (piw-master --debian-contents): no Debian package is named.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use piwheels_common::protocols::FailureClass;

    use super::*;

    #[test]
    fn the_report_ranks_packages_and_says_how_to_requeue() {
        let report = TriageReport {
            classes: vec![(FailureClass::MissingHeader, 312), (FailureClass::MissingTool, 4)],
            debian_packages: vec![("libxml2-dev".into(), 312)],
            causes: vec![
                (FailureClass::MissingHeader, "libxml/xmlversion.h".into(), Some("libxml2-dev".into()), 312),
                (FailureClass::MissingTool, "rustc".into(), None, 4),
            ],
            untriaged: 3,
            contents: true,
        };
        let text = render(&report);
        assert!(
            text.contains("installing libxml2-dev would let 312 failed release(s) be retried: piw-triage requeue --debian-package libxml2-dev"),
            "{text}"
        );
        assert!(text.contains("      312  missing header libxml/xmlversion.h  (Debian package libxml2-dev)"), "{text}");
        assert!(text.contains("        4  missing tool rustc  (no Debian package ships it)"), "{text}");
        assert!(text.contains("3 failed build(s) are still to be read"), "{text}");
        assert!(!text.contains("--debian-contents"), "{text}");
    }

    #[test]
    fn a_report_without_contents_or_failures_says_so() {
        let text = render(&TriageReport::default());
        assert!(text.contains("No failed release waits"), "{text}");
        assert!(text.contains("piw-master --debian-contents"), "{text}");
    }
}
