//! crank ABI v1: the module imports nothing, exports `memory`, `crank_alloc` and
//! `crank_evaluate`, and answers JSON.

use wasmtime::{Engine, InstancePre, Linker, Module, ModuleExport};

use super::{MAX_ANSWER, State, func_export, store, trapped};

/// A module checked to speak crank ABI v1, ready to instantiate.
pub(super) struct Host {
    pre: InstancePre<State<()>>,
    memory: ModuleExport,
    alloc: ModuleExport,
    evaluate: ModuleExport,
}

impl Host {
    pub(super) fn new(engine: &Engine, module: &Module) -> Result<Self, String> {
        if let Some(import) = module.imports().next() {
            return Err(format!(
                "imports {}::{}; a crank ABI module may import nothing (OPA modules export \
                 `opa_wasm_abi_version`, see policies/README.md)",
                import.module(),
                import.name()
            ));
        }
        use wasmtime::ValType::{I32, I64};
        let memory = module.get_export_index("memory").ok_or("does not export `memory` (crank ABI v1)")?;
        if !matches!(module.get_export("memory"), Some(wasmtime::ExternType::Memory(_))) {
            return Err("`memory` is not a memory (crank ABI v1)".into());
        }
        let alloc = func_export(module, "crank_alloc", &[I32], &[I32])?;
        let evaluate = func_export(module, "crank_evaluate", &[I32, I32, I32, I32], &[I64])?;
        let pre = Linker::new(engine).instantiate_pre(module).map_err(|e| format!("{e:#}"))?;
        let host = Self { pre, memory, alloc, evaluate };
        Ok(host)
    }

    /// Evaluates `hook` on `input` (JSON) in a fresh instance; the answer's bytes.
    pub(super) fn call(&self, engine: &Engine, hook: &str, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut store = store(engine, ())?;
        let instance = self.pre.instantiate(&mut store).map_err(|e| format!("instantiate: {e:#}"))?;
        let func = |store: &mut wasmtime::Store<_>, e: &ModuleExport| {
            instance.get_module_export(&mut *store, e).and_then(wasmtime::Extern::into_func).ok_or("missing export")
        };
        let memory = instance
            .get_module_export(&mut store, &self.memory)
            .and_then(wasmtime::Extern::into_memory)
            .ok_or("no memory export")?;
        let alloc = func(&mut store, &self.alloc)?.typed::<i32, i32>(&store).map_err(|e| e.to_string())?;
        let evaluate =
            func(&mut store, &self.evaluate)?.typed::<(i32, i32, i32, i32), i64>(&store).map_err(|e| e.to_string())?;

        // The hook name and the input, side by side in one allocation.
        let total = hook.len() + input.len();
        let len = i32::try_from(total).map_err(|_| "input too large")?;
        let ptr = alloc.call(&mut store, len).map_err(|e| trapped(&store, "crank_alloc", &e))?;
        let start = usize::try_from(ptr).map_err(|_| "crank_alloc returned a negative pointer")?;
        let data = memory.data_mut(&mut store);
        let dest =
            data.get_mut(start..start.saturating_add(total)).ok_or("crank_alloc returned memory out of bounds")?;
        let (h, i) = dest.split_at_mut(hook.len());
        h.copy_from_slice(hook.as_bytes());
        i.copy_from_slice(input);
        let hook_len = i32::try_from(hook.len()).map_err(|_| "hook name too long")?;
        let packed = evaluate
            .call(&mut store, (ptr, hook_len, ptr.wrapping_add(hook_len), len - hook_len))
            .map_err(|e| trapped(&store, "crank_evaluate", &e))?;
        let at = usize::try_from((packed >> 32) & 0xffff_ffff).unwrap_or(usize::MAX);
        let len = usize::try_from(packed & 0xffff_ffff).unwrap_or(usize::MAX);
        if len > MAX_ANSWER {
            return Err(format!("answer of {len} bytes is larger than {MAX_ANSWER}"));
        }
        memory
            .data(&store)
            .get(at..at.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("answer at {at} ({len} bytes) is out of bounds"))
    }
}
