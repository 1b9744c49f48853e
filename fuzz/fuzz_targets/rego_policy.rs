//! Policy inputs through the Rego engine (regorus): the shipped default policy alone and with
//! each example policy beside it, each hook called with an input read from the fuzz data (the format
//! is `crank_fuzz::call_policy_hook`'s). Worker ids, names and reasons reach policy from
//! CSRs and tokens, so they are attacker-chosen strings.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use crank_fuzz::call_policy_hook;
use crank_policy::RegoEngine;
use libfuzzer_sys::fuzz_target;

fn engines() -> &'static [RegoEngine] {
    static ENGINES: OnceLock<Vec<RegoEngine>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let read = |path: std::path::PathBuf| {
            let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, source)
        };
        let default = read(policies.join("default/defaults.rego"));
        let mut engines = vec![RegoEngine::from_sources(vec![default.clone()]).expect("default policy")];
        // Each example is meant to sit beside the default policy, as its README says.
        for example in ["capability_sans", "deny_workers", "per_environment_validity", "absolute_renewal_windows"] {
            let example = read(policies.join("examples").join(format!("{example}.rego")));
            engines.push(RegoEngine::from_sources(vec![default.clone(), example]).expect("example policy loads"));
        }
        engines
    })
}

fuzz_target!(|data: &[u8]| {
    for engine in engines() {
        call_policy_hook(engine, data);
    }
});
