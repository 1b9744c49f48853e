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
        /// can_issue_certificate, certificate_validity_period, should_renew_certificate or revoke_certificate.
        #[arg(long)]
        hook: String,
        /// The input document (JSON file; `-` for stdin).
        #[arg(long)]
        input: PathBuf,
    },
    /// Run the table-driven cases in DIR/cases (or DIR itself) against DIR's policy;
    /// exits non-zero on any mismatch.
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// Case directory (default: DIR/cases, else DIR).
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
                Ok(decision) => println!("{}", serde_json::to_string_pretty(&decision)?),
                Err(e) => {
                    // Fail closed, visibly: this is what the CA would do with this input.
                    println!("{}", serde_json::json!({"error": e, "effect": "deny"}));
                    anyhow::bail!("{e}");
                }
            }
            Ok(())
        }
        PolicyCommand::Test { dir, cases } => {
            let engine = load_policy(Some(&dir))?;
            let case_dir =
                cases.unwrap_or_else(|| if dir.join("cases").is_dir() { dir.join("cases") } else { dir.clone() });
            let all = crank_policy::cases::load_dir(&case_dir).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!all.is_empty(), "no cases (*.json) in {}", case_dir.display());
            let mut failed = 0;
            for case in &all {
                match crank_policy::cases::run(engine.as_ref(), case) {
                    Ok(()) => println!("PASS: {}", case.name),
                    Err(e) => {
                        failed += 1;
                        println!("FAIL: {}: {e}", case.name);
                    }
                }
            }
            println!("{}", "-".repeat(40));
            println!("PASS: {}/{}", all.len() - failed, all.len());
            anyhow::ensure!(failed == 0, "{failed} case(s) failed");
            Ok(())
        }
    }
}
