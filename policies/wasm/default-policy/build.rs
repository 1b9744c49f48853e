//! A small shadow stack (the default is 1 MiB): the policy's recursion is shallow, and
//! every page of linear memory is a page the host scans and resets after each decision.
//! Overflowing it runs below address 0 and traps, which denies.

fn main() {
    println!("cargo::rustc-link-arg-cdylib=-zstack-size=131072");
}
