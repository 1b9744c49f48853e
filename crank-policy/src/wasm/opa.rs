//! The OPA Wasm ABI 1.x: modules built from Rego by `opa build -t wasm`.
//!
//! Such a module imports its linear memory (`env.memory`) and the host functions
//! `env.opa_abort`, `env.opa_println` and `env.opa_builtin0` .. `env.opa_builtin4`;
//! it exports the ABI version globals, `opa_malloc`, `opa_json_parse`, `opa_json_dump`,
//! `opa_heap_ptr_get`, the evaluation-context functions, `eval`, `entrypoints`,
//! `builtins` and, from ABI 1.2, the one-shot `opa_eval`.
//!
//! At load the host checks every import and export, instantiates the module once to
//! read its ABI version (major 1), its `builtins()` (each must be one the host
//! provides, see [`SUPPORTED_BUILTINS`]; the rest are named in the error) and its
//! `entrypoints()`: one per hook, named `crank/<hook>` (the `-e` arguments of
//! `opa build`; `data.crank.<hook>` is accepted too).
//!
//! Every decision gets a fresh store, a fresh `env.memory` (capped at
//! [`super::MEMORY_LIMIT`]; it is exported by a one-line provider module
//! instantiated beside the policy so that it comes from the pooling allocator, zeroed)
//! and a fresh instance of the policy, with the fuel budget.
//! Base `data` is the empty object: everything a policy knows comes from its Rego and
//! the hook's input. With ABI 1.2 and later a decision is `opa_json_parse("{}")` for
//! `data`, the input JSON written at the heap pointer, and one `opa_eval` call that
//! returns the result set as JSON; before 1.2 it goes through `opa_eval_ctx_*`,
//! `eval` and `opa_json_dump`. The result set must be `[{"result": <answer>}]`; an
//! empty set (the rule is undefined), several results, a trap, an `opa_abort`, a
//! builtin error or anything out of bounds is an error, so the decision denies.

use std::collections::HashMap;
use std::sync::Arc;

use crank_security_core::PolicyError;
use serde::de::DeserializeOwned;
use wasmtime::ValType::I32;
use wasmtime::{
    Caller, Engine, Extern, ExternType, Instance, InstancePre, Linker, Memory, Module, ModuleExport, Store,
};

pub use super::opa_builtins::SUPPORTED as SUPPORTED_BUILTINS;
use super::opa_builtins::{self, Builtin};
use super::{HOOKS, MAX_ANSWER, MEMORY_LIMIT, State, func_export, store, trapped};

/// Entrypoint names are `crank/<hook>`.
pub const ENTRYPOINT_PACKAGE: &str = "crank";
/// Longest message read from `opa_abort` or `opa_println`.
const MAX_MESSAGE: usize = 4096;
const PAGE: usize = 64 * 1024;

/// What a decision's store carries besides its limits.
pub(crate) struct Ctx {
    memory: Option<Memory>,
    builtins: Arc<Builtins>,
}

/// The host-side builtins the module asked for, by the id it gave them.
type Builtins = HashMap<i32, (String, Builtin)>;

type OpaStore = Store<State<Ctx>>;

/// The module's imports, in order, as the host satisfies them.
enum Import {
    Memory,
    Func(String),
}

struct Exports {
    malloc: ModuleExport,
    json_parse: ModuleExport,
    json_dump: ModuleExport,
    heap_ptr_get: ModuleExport,
    ctx_new: ModuleExport,
    ctx_set_input: ModuleExport,
    ctx_set_data: ModuleExport,
    ctx_set_entrypoint: ModuleExport,
    ctx_get_result: ModuleExport,
    eval: ModuleExport,
    entrypoints: ModuleExport,
    builtins: ModuleExport,
    opa_eval: Option<ModuleExport>,
}

/// A module checked to speak the OPA Wasm ABI, with its entrypoints and builtins resolved.
pub(super) struct Host {
    module: Module,
    imports: Vec<Import>,
    linker: Linker<State<Ctx>>,
    memory: InstancePre<State<Ctx>>,
    exports: Exports,
    /// Per hook; `can_access_capability` may be missing (the built-in rule decides).
    entrypoints: [Option<i32>; 5],
    builtins: Arc<Builtins>,
    minor: i32,
}

impl Host {
    pub(super) fn new(engine: &Engine, module: Module) -> Result<Self, String> {
        let (imports, limits) = imports(&module)?;
        let exports = exports(&module)?;
        let mut host = Self {
            module,
            imports,
            linker: host_functions(engine)?,
            memory: memory_provider(engine, limits)?,
            exports,
            entrypoints: [None; 5],
            builtins: Arc::new(HashMap::new()),
            minor: 0,
        };
        // One instance to read what the module says about itself.
        let mut store = store(engine, Ctx { memory: None, builtins: host.builtins.clone() })?;
        let instance = host.instantiate(&mut store)?;
        let global = |store: &mut OpaStore, name: &str| {
            instance
                .get_global(&mut *store, name)
                .and_then(|g| g.get(&mut *store).i32())
                .ok_or_else(|| format!("does not export the i32 global `{name}` (OPA Wasm ABI)"))
        };
        let major = global(&mut store, "opa_wasm_abi_version")?;
        host.minor = global(&mut store, "opa_wasm_abi_minor_version")?;
        if major != 1 {
            return Err(format!("speaks OPA Wasm ABI {major}.{}; this host speaks 1.x", host.minor));
        }
        if host.minor < 2 {
            host.exports.opa_eval = None;
        }
        host.builtins = Arc::new(host.resolve_builtins(&mut store, instance)?);
        host.entrypoints = host.resolve_entrypoints(&mut store, instance)?;
        Ok(host)
    }

    pub(super) fn minor(&self) -> i32 {
        self.minor
    }

    /// Evaluates the entrypoint of hook number `hook` on `input` (JSON) in a fresh
    /// instance; the result set as JSON.
    pub(super) fn call(&self, engine: &Engine, hook: usize, input: &[u8]) -> Result<Vec<u8>, String> {
        let entrypoint = self.entrypoints.get(hook).copied().flatten().ok_or("no such hook")?;
        let mut store = store(engine, Ctx { memory: None, builtins: self.builtins.clone() })?;
        let instance = self.instantiate(&mut store)?;
        let memory = store.data().host.memory.ok_or("no memory")?;
        let f = Funcs { instance, exports: &self.exports };
        let data = parse(&mut store, &f, memory, b"{}", "data")?;
        let result = if let Some(opa_eval) = &self.exports.opa_eval {
            // The input goes at the heap pointer; the evaluation's heap starts after it.
            let heap = f.call::<(), i32>(&mut store, &self.exports.heap_ptr_get, (), "opa_heap_ptr_get")?;
            let at = usize::try_from(heap).map_err(|_| "opa_heap_ptr_get returned a negative pointer")?;
            let end = at.checked_add(input.len()).ok_or("input too large")?;
            if end > memory.data_size(&store) {
                let pages = (end - memory.data_size(&store)).div_ceil(PAGE) as u64;
                memory
                    .grow(&mut store, pages)
                    .map_err(|_| format!("an input of {} bytes does not fit in the memory cap", input.len()))?;
            }
            memory.write(&mut store, at, input).map_err(|e| e.to_string())?;
            let len = i32::try_from(input.len()).map_err(|_| "input too large")?;
            let end = i32::try_from(end).map_err(|_| "input too large")?;
            f.call::<(i32, i32, i32, i32, i32, i32, i32), i32>(
                &mut store,
                opa_eval,
                (0, entrypoint, data, heap, len, end, 0),
                "opa_eval",
            )?
        } else {
            let input = parse(&mut store, &f, memory, input, "input")?;
            let e = &self.exports;
            let ctx = f.call::<(), i32>(&mut store, &e.ctx_new, (), "opa_eval_ctx_new")?;
            f.call::<(i32, i32), ()>(&mut store, &e.ctx_set_input, (ctx, input), "opa_eval_ctx_set_input")?;
            f.call::<(i32, i32), ()>(&mut store, &e.ctx_set_data, (ctx, data), "opa_eval_ctx_set_data")?;
            f.call::<(i32, i32), ()>(
                &mut store,
                &e.ctx_set_entrypoint,
                (ctx, entrypoint),
                "opa_eval_ctx_set_entrypoint",
            )?;
            f.call::<i32, i32>(&mut store, &e.eval, ctx, "eval")?;
            let result = f.call::<i32, i32>(&mut store, &e.ctx_get_result, ctx, "opa_eval_ctx_get_result")?;
            f.call::<i32, i32>(&mut store, &e.json_dump, result, "opa_json_dump")?
        };
        c_string(memory.data(&store), result, MAX_ANSWER).map(<[u8]>::to_vec)
    }

    /// A fresh `env.memory` and instance in `store`.
    fn instantiate(&self, store: &mut OpaStore) -> Result<Instance, String> {
        let provider = self.memory.instantiate(&mut *store).map_err(|e| format!("env.memory: {e:#}"))?;
        let memory = provider.get_memory(&mut *store, "memory").ok_or("env.memory: no memory")?;
        store.data_mut().host.memory = Some(memory);
        let externs = self
            .imports
            .iter()
            .map(|import| match import {
                Import::Memory => Ok(memory.into()),
                Import::Func(name) => {
                    self.linker.get(&mut *store, "env", name).map_err(|e| format!("env.{name}: {e:#}"))
                }
            })
            .collect::<Result<Vec<Extern>, String>>()?;
        Instance::new(&mut *store, &self.module, &externs).map_err(|e| format!("instantiate: {e:#}"))
    }

    /// The value of `builtins()`: every name must be a builtin the host provides.
    fn resolve_builtins(&self, store: &mut OpaStore, instance: Instance) -> Result<Builtins, String> {
        let map = self.dump_call(store, instance, &self.exports.builtins, "builtins")?;
        let mut resolved = HashMap::new();
        let mut missing = Vec::new();
        for (name, id) in &map {
            match opa_builtins::lookup(name) {
                Some(f) => {
                    resolved.insert(*id, (name.clone(), f));
                }
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            let supported: Vec<&str> = SUPPORTED_BUILTINS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "the policy calls built-in functions this host does not provide: {} (provided: {}; \
                 OPA compiles most built-ins into the module itself, these ones it leaves to the host)",
                missing.join(", "),
                supported.join(", ")
            ));
        }
        Ok(resolved)
    }

    /// Whether the module has an entrypoint for hook number `hook`.
    pub(super) fn has_entrypoint(&self, hook: usize) -> bool {
        self.entrypoints.get(hook).is_some_and(Option::is_some)
    }

    /// The ids of the `crank/<hook>` entrypoints, in hook order. Every hook but
    /// `can_access_capability` (added later; modules built before it lack it) must
    /// have one.
    fn resolve_entrypoints(&self, store: &mut OpaStore, instance: Instance) -> Result<[Option<i32>; 5], String> {
        let map = self.dump_call(store, instance, &self.exports.entrypoints, "entrypoints")?;
        let normal: HashMap<String, i32> =
            map.into_iter().map(|(k, v)| (k.trim_start_matches("data.").replace('.', "/"), v)).collect();
        let mut ids = [None; 5];
        let mut missing = Vec::new();
        for (id, hook) in ids.iter_mut().zip(HOOKS) {
            *id = normal.get(&format!("{ENTRYPOINT_PACKAGE}/{hook}")).copied();
            if id.is_none() && hook != "can_access_capability" {
                missing.push(format!("{ENTRYPOINT_PACKAGE}/{hook}"));
            }
        }
        if !missing.is_empty() {
            let all: Vec<String> = HOOKS.iter().map(|h| format!("-e {ENTRYPOINT_PACKAGE}/{h}")).collect();
            return Err(format!(
                "the module has no entrypoint {}; build it with `opa build -t wasm {}`",
                missing.join(", "),
                all.join(" ")
            ));
        }
        Ok(ids)
    }

    /// Calls a `() -> value` export and reads the value as a JSON object of numbers.
    fn dump_call(
        &self,
        store: &mut OpaStore,
        instance: Instance,
        export: &ModuleExport,
        name: &str,
    ) -> Result<HashMap<String, i32>, String> {
        let f = Funcs { instance, exports: &self.exports };
        let value = f.call::<(), i32>(store, export, (), name)?;
        let text = f.call::<i32, i32>(store, &self.exports.json_dump, value, "opa_json_dump")?;
        let memory = store.data().host.memory.ok_or("no memory")?;
        let text = c_string(memory.data(&*store), text, MAX_ANSWER)?;
        serde_json::from_slice(text).map_err(|e| format!("`{name}()` is not a JSON object of ids: {e}"))
    }
}

/// Typed calls into one instance's exports.
struct Funcs<'a> {
    instance: Instance,
    exports: &'a Exports,
}

impl Funcs<'_> {
    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &self,
        store: &mut OpaStore,
        export: &ModuleExport,
        params: P,
        name: &str,
    ) -> Result<R, String> {
        let func = self
            .instance
            .get_module_export(&mut *store, export)
            .and_then(Extern::into_func)
            .ok_or_else(|| format!("`{name}` is not a function"))?
            .typed::<P, R>(&*store)
            .map_err(|e| format!("`{name}`: {e:#}"))?;
        func.call(&mut *store, params).map_err(|e| trapped(store, name, &e))
    }
}

/// Copies `json` into the module and parses it there; the value's address.
fn parse(store: &mut OpaStore, f: &Funcs<'_>, memory: Memory, json: &[u8], what: &str) -> Result<i32, String> {
    let len = i32::try_from(json.len()).map_err(|_| format!("{what} too large"))?;
    let at = f.call::<i32, i32>(store, &f.exports.malloc, len, "opa_malloc")?;
    let start = usize::try_from(at).map_err(|_| "opa_malloc returned a negative pointer")?;
    memory.write(&mut *store, start, json).map_err(|_| "opa_malloc returned memory out of bounds")?;
    match f.call::<(i32, i32), i32>(store, &f.exports.json_parse, (at, len), "opa_json_parse")? {
        0 => Err(format!("opa_json_parse rejected the {what}")),
        value => Ok(value),
    }
}

/// The NUL-terminated string at `at`, at most `limit` bytes long.
fn c_string(memory: &[u8], at: i32, limit: usize) -> Result<&[u8], String> {
    // Addresses are unsigned 32-bit offsets carried in i32s.
    let start = u32::from_ne_bytes(at.to_ne_bytes()) as usize;
    let rest = memory.get(start..).ok_or_else(|| format!("string at {start} is out of bounds"))?;
    let window = rest.get(..limit.saturating_add(1)).unwrap_or(rest);
    let len = window
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("string at {start} is not NUL-terminated within {limit} bytes"))?;
    Ok(window.get(..len).unwrap_or_default())
}

/// A message from `opa_abort` or `opa_println`, lossy and bounded.
fn message(caller: &Caller<'_, State<Ctx>>, at: i32) -> String {
    let Some(memory) = caller.data().host.memory else { return "<no memory>".into() };
    match c_string(memory.data(caller), at, MAX_MESSAGE) {
        Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Err(e) => format!("<{e}>"),
    }
}

/// `opa_builtinN`: the arguments are dumped to JSON in the module, the builtin runs on
/// the host, its answer is parsed back in the module.
fn builtin(mut caller: Caller<'_, State<Ctx>>, id: i32, args: &[i32]) -> wasmtime::Result<i32> {
    let builtins = caller.data().host.builtins.clone();
    let (name, f) = builtins.get(&id).ok_or_else(|| wasmtime::format_err!("called unknown builtin id {id}"))?;
    let memory = caller.data().host.memory.ok_or_else(|| wasmtime::format_err!("no memory"))?;
    let export = |caller: &mut Caller<'_, State<Ctx>>, export: &str| {
        caller.get_export(export).and_then(Extern::into_func).ok_or_else(|| wasmtime::format_err!("no `{export}`"))
    };
    let dump = export(&mut caller, "opa_json_dump")?.typed::<i32, i32>(&caller)?;
    let mut values = Vec::with_capacity(args.len());
    for &arg in args {
        let at = dump.call(&mut caller, arg)?;
        let text = c_string(memory.data(&caller), at, MAX_ANSWER).map_err(|e| wasmtime::format_err!("{name}: {e}"))?;
        values.push(
            serde_json::from_slice(text).map_err(|e| wasmtime::format_err!("{name}: an argument is not JSON: {e}"))?,
        );
    }
    let answer = f(&values).map_err(|e| wasmtime::format_err!("{name}: {e}"))?;
    let json = serde_json::to_vec(&answer).map_err(|e| wasmtime::format_err!("{name}: {e}"))?;
    let len = i32::try_from(json.len()).map_err(|_| wasmtime::format_err!("{name}: answer too large"))?;
    let malloc = export(&mut caller, "opa_malloc")?.typed::<i32, i32>(&caller)?;
    let parse = export(&mut caller, "opa_json_parse")?.typed::<(i32, i32), i32>(&caller)?;
    let at = malloc.call(&mut caller, len)?;
    memory.write(&mut caller, u32::from_ne_bytes(at.to_ne_bytes()) as usize, &json)?;
    match parse.call(&mut caller, (at, len))? {
        0 => Err(wasmtime::format_err!("{name}: opa_json_parse rejected the answer")),
        value => Ok(value),
    }
}

/// The imports, each checked against the ABI, and the limits (in pages) of the memory
/// to provide.
fn imports(module: &Module) -> Result<(Vec<Import>, (u32, u32)), String> {
    let cap_pages = u32::try_from(MEMORY_LIMIT / PAGE).unwrap_or(u32::MAX);
    let mut memory = None;
    let mut out = Vec::new();
    for import in module.imports() {
        let (m, name) = (import.module(), import.name());
        let all_i32 = |f: &wasmtime::FuncType, params: usize, results: usize| {
            f.params().len() == params
                && f.results().len() == results
                && f.params().chain(f.results()).all(|t| t.is_i32())
        };
        let builtin = name.strip_prefix("opa_builtin").and_then(|n| n.parse::<usize>().ok()).filter(|n| *n <= 4);
        let kind = match (m, name, import.ty(), builtin) {
            ("env", "memory", ExternType::Memory(ty), _) => {
                if ty.is_64() || ty.is_shared() {
                    return Err("env.memory must be a 32-bit, unshared memory".into());
                }
                let min = u32::try_from(ty.minimum()).unwrap_or(u32::MAX);
                if min > cap_pages {
                    return Err(format!("env.memory asks for {min} pages; the cap is {cap_pages}"));
                }
                let max = ty.maximum().and_then(|m| u32::try_from(m).ok()).unwrap_or(cap_pages).min(cap_pages);
                memory = Some((min, max));
                Import::Memory
            }
            ("env", "opa_abort" | "opa_println", ExternType::Func(f), _) if all_i32(&f, 1, 0) => {
                Import::Func(name.to_owned())
            }
            ("env", _, ExternType::Func(f), Some(n)) if all_i32(&f, n + 2, 1) => Import::Func(name.to_owned()),
            _ => {
                return Err(format!(
                    "imports {m}::{name}, which the OPA Wasm ABI does not define (a host provides env.memory, \
                     env.opa_abort, env.opa_println and env.opa_builtin0..4 of the ABI's types)"
                ));
            }
        };
        out.push(kind);
    }
    let memory = memory.ok_or("does not import env.memory (OPA Wasm ABI)")?;
    Ok((out, memory))
}

/// The host functions of the ABI, defined once; each store gets its own handles.
fn host_functions(engine: &Engine) -> Result<Linker<State<Ctx>>, String> {
    let mut linker = Linker::new(engine);
    let fail = |e: wasmtime::Error| format!("host functions: {e:#}");
    linker
        .func_wrap("env", "opa_abort", |c: Caller<'_, State<Ctx>>, at: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!("opa_abort: {}", message(&c, at)))
        })
        .map_err(fail)?
        .func_wrap("env", "opa_println", |c: Caller<'_, State<Ctx>>, at: i32| {
            tracing::debug!(target: "crank_policy::opa", message = %message(&c, at), "opa_println");
        })
        .map_err(fail)?
        .func_wrap("env", "opa_builtin0", |c: Caller<'_, State<Ctx>>, id: i32, _: i32| builtin(c, id, &[]))
        .map_err(fail)?
        .func_wrap("env", "opa_builtin1", |c: Caller<'_, State<Ctx>>, id: i32, _: i32, a: i32| builtin(c, id, &[a]))
        .map_err(fail)?
        .func_wrap("env", "opa_builtin2", |c: Caller<'_, State<Ctx>>, id: i32, _: i32, a: i32, b: i32| {
            builtin(c, id, &[a, b])
        })
        .map_err(fail)?
        .func_wrap("env", "opa_builtin3", |c: Caller<'_, State<Ctx>>, id: i32, _: i32, a: i32, b: i32, d: i32| {
            builtin(c, id, &[a, b, d])
        })
        .map_err(fail)?
        .func_wrap(
            "env",
            "opa_builtin4",
            |c: Caller<'_, State<Ctx>>, id: i32, _: i32, a: i32, b: i32, d: i32, e: i32| builtin(c, id, &[a, b, d, e]),
        )
        .map_err(fail)?;
    Ok(linker)
}

/// A module that only defines and exports a memory of these limits: instantiated next
/// to the policy, it gives the policy an `env.memory` from the pooling allocator (a
/// memory made with `Memory::new` would be mapped and unmapped for every decision).
fn memory_provider(engine: &Engine, (min, max): (u32, u32)) -> Result<InstancePre<State<Ctx>>, String> {
    let module = Module::new(engine, format!(r#"(module (memory (export "memory") {min} {max}))"#))
        .map_err(|e| format!("env.memory: {e:#}"))?;
    Linker::new(engine).instantiate_pre(&module).map_err(|e| format!("env.memory: {e:#}"))
}

/// The exports, each checked to have the ABI's signature; all missing ones are named.
fn exports(module: &Module) -> Result<Exports, String> {
    let mut missing = Vec::new();
    let mut get = |name: &str, params: &[wasmtime::ValType], results: &[wasmtime::ValType]| {
        func_export(module, name, params, results).map_err(|e| missing.push(e)).ok()
    };
    let found = (
        get("opa_malloc", &[I32], &[I32]),
        get("opa_json_parse", &[I32, I32], &[I32]),
        get("opa_json_dump", &[I32], &[I32]),
        get("opa_heap_ptr_get", &[], &[I32]),
        get("opa_eval_ctx_new", &[], &[I32]),
        get("opa_eval_ctx_set_input", &[I32, I32], &[]),
        get("opa_eval_ctx_set_data", &[I32, I32], &[]),
        get("opa_eval_ctx_set_entrypoint", &[I32, I32], &[]),
        get("opa_eval_ctx_get_result", &[I32], &[I32]),
        get("eval", &[I32], &[I32]),
        get("entrypoints", &[], &[I32]),
        get("builtins", &[], &[I32]),
    );
    let opa_eval = match module.get_export("opa_eval") {
        Some(_) => get("opa_eval", &[const { I32 }; 7], &[I32]),
        None => None,
    };
    match found {
        (
            Some(malloc),
            Some(json_parse),
            Some(json_dump),
            Some(heap_ptr_get),
            Some(ctx_new),
            Some(ctx_set_input),
            Some(ctx_set_data),
            Some(ctx_set_entrypoint),
            Some(ctx_get_result),
            Some(eval),
            Some(entrypoints),
            Some(builtins),
        ) if missing.is_empty() => Ok(Exports {
            malloc,
            json_parse,
            json_dump,
            heap_ptr_get,
            ctx_new,
            ctx_set_input,
            ctx_set_data,
            ctx_set_entrypoint,
            ctx_get_result,
            eval,
            entrypoints,
            builtins,
            opa_eval,
        }),
        _ => Err(format!("does not speak the OPA Wasm ABI: {}", missing.join("; "))),
    }
}

#[derive(serde::Deserialize)]
struct Binding<T> {
    result: T,
}

/// The answer in a result set `[{"result": <answer>}]`.
pub(super) fn result<T: DeserializeOwned>(hook: &str, out: &[u8]) -> Result<T, PolicyError> {
    let text = || String::from_utf8_lossy(out);
    let set: Vec<serde_json::Value> = serde_json::from_slice(out)
        .map_err(|e| PolicyError::MalformedOutput(format!("{hook}: result set {} is not a JSON array: {e}", text())))?;
    let [binding] = <[serde_json::Value; 1]>::try_from(set).map_err(|set| {
        PolicyError::MalformedOutput(match set.len() {
            0 => format!("{ENTRYPOINT_PACKAGE}/{hook} is undefined for this input"),
            n => format!("{ENTRYPOINT_PACKAGE}/{hook} has {n} results, expected one"),
        })
    })?;
    serde_json::from_value::<Binding<T>>(binding)
        .map(|b| b.result)
        .map_err(|e| PolicyError::MalformedOutput(format!("{hook} answered {}: {e}", text())))
}
