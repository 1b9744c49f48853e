//! The `--name value` options of the benchmark drivers (`bench-driver`, `agent-bench`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// `--name value` pairs.
#[derive(Debug)]
pub struct BenchOpts(HashMap<String, String>);

impl BenchOpts {
    /// The pairs of `args`; anything else is an error naming it.
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        while let Some(name) = args.next() {
            let Some(name) = name.strip_prefix("--") else { bail!("expected --option, got {name:?}") };
            let value = args.next().with_context(|| format!("--{name} takes a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    /// The value of `--name`, if given.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of `--name`, which is required.
    pub fn get(&self, name: &str) -> anyhow::Result<&str> {
        self.opt(name).with_context(|| format!("--{name} is required"))
    }

    /// The whole number given with `--name`, which is required.
    pub fn num(&self, name: &str) -> anyhow::Result<usize> {
        self.get(name)?.parse().with_context(|| format!("--{name} takes a whole number"))
    }

    /// The whole number given with `--name`, or `default`.
    pub fn num_or(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        if self.0.contains_key(name) { self.num(name) } else { Ok(default) }
    }

    /// The path given with `--name`, which is required.
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(self.get(name)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_pairs_and_bad_ones_are_named() {
        let args = ["--n", "12", "--dir", "/tmp/x"].map(String::from);
        let opts = BenchOpts::parse(args.into_iter()).unwrap();
        assert_eq!(opts.num("n").unwrap(), 12);
        assert_eq!(opts.num_or("m", 3).unwrap(), 3);
        assert_eq!(opts.path("dir").unwrap(), PathBuf::from("/tmp/x"));
        assert!(opts.get("m").unwrap_err().to_string().contains("--m is required"));
        assert!(opts.num("dir").unwrap_err().to_string().contains("--dir takes a whole number"));
        let e = BenchOpts::parse(["n"].map(String::from).into_iter()).unwrap_err();
        assert!(e.to_string().contains("expected --option"), "{e}");
        let e = BenchOpts::parse(["--n"].map(String::from).into_iter()).unwrap_err();
        assert!(e.to_string().contains("--n takes a value"), "{e}");
    }
}
