//! `crank policy`: evaluate and test policies before they go live.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use crank_security_core::PolicyEngine;

/// `crank policy ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print one hook's decision as JSON.
    Eval {
        /// Policy directory (`.rego` files or one `.wasm` module); omitted: the built-in policy.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// can_issue_certificate, certificate_validity_period, should_renew_certificate,
        /// revoke_certificate or can_access_capability.
        #[arg(long)]
        hook: String,
        /// The input document (JSON file; `-` for stdin).
        #[arg(long)]
        input: PathBuf,
    },
    /// Run table-driven cases: every `cases/` directory under DIR against the policy
    /// directory it sits in (`crank policy test policies` runs the repository's own),
    /// or the cases of --cases against DIR. Exits non-zero on any mismatch.
    Test {
        /// Policy directory, or a tree of them.
        dir: PathBuf,
        /// Case directory to run against DIR.
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

fn load_policy(dir: Option<&std::path::Path>) -> anyhow::Result<Arc<dyn PolicyEngine>> {
    Ok(match dir {
        Some(d) => crank_policy::load_dir(d)?,
        None => crank_policy::builtin(),
    })
}

pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Eval { policy_dir, hook, input } => {
            let engine = load_policy(policy_dir.as_deref())?;
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let doc: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
            match crank_policy::cases::evaluate(engine.as_ref(), &hook, &doc) {
                Ok(decision) => say!("{}", serde_json::to_string_pretty(&decision)?),
                Err(e) => {
                    // Fail closed, visibly: this is what the CA would do with this input.
                    say!("{}", serde_json::json!({"error": e, "effect": "deny"}));
                    anyhow::bail!("{e}");
                }
            }
            Ok(())
        }
        PolicyCommand::Test { dir, cases } => {
            // With --cases, those cases against DIR; else every cases/ directory under
            // DIR against the policy directory it sits in.
            let suites = match cases {
                Some(cases_dir) => vec![crank_policy::cases::Suite { policy_dir: dir.clone(), cases_dir }],
                None => crank_policy::cases::find_suites(&dir),
            };
            anyhow::ensure!(
                !suites.is_empty(),
                "no cases: no cases/ directory (or *.json case files) under {}",
                dir.display()
            );
            // DIR's whole policy, loaded once, for its own cases that name no files.
            let mut whole = None;
            let (mut total, mut failed) = (0, 0);
            for suite in &suites {
                let all = crank_policy::cases::load_dir(&suite.cases_dir).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(!all.is_empty(), "no cases (*.json) in {}", suite.cases_dir.display());
                say!("== {} ({} cases from {})", suite.policy_dir.display(), all.len(), suite.cases_dir.display());
                for case in &all {
                    total += 1;
                    let engine = if suite.policy_dir == dir && case.policy.is_empty() {
                        whole.get_or_insert_with(|| load_policy(Some(&dir)).map_err(|e| e.to_string())).clone()
                    } else {
                        crank_policy::cases::engine_for(&suite.policy_dir, case)
                    };
                    match engine.and_then(|e| crank_policy::cases::run(e.as_ref(), case)) {
                        Ok(()) => say!("PASS: {}", case.name),
                        Err(e) => {
                            failed += 1;
                            say!("FAIL: {}: {e}", case.name);
                        }
                    }
                }
            }
            say!("{}", "-".repeat(40));
            say!("PASS: {}/{}", total - failed, total);
            anyhow::ensure!(failed == 0, "{failed} case(s) failed");
            Ok(())
        }
    }
}
