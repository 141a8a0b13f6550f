//! A compiled policy module with its manifest, checked against the ABI.

use policy_sdk::abi::{IMPORT_MODULE, MANIFEST_SECTION, MARKER_EXPORT};
use policy_sdk::manifest::{DecodedManifest, ManifestError};
use wasmtime::{ExternType, Module};

/// Why a module does not fit the policy ABI.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not a WebAssembly binary with well-formed section headers.
    #[error("not a WebAssembly module")]
    NotWasm,
    /// No `pol_manifest` custom section.
    #[error("no `{MANIFEST_SECTION}` custom section")]
    NoManifest,
    /// The manifest does not decode.
    #[error("bad manifest")]
    Manifest(#[source] ManifestError),
    /// A required export is missing or has the wrong type.
    #[error("export `{0}` missing or of the wrong type")]
    Export(&'static str),
    /// An import the host does not provide.
    #[error("unknown import `{0}`")]
    Import(String),
}

/// A manifest with owned strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleManifest {
    /// Module name.
    pub name: String,
    /// Module version.
    pub version: String,
    /// Hook mask.
    pub hooks: u32,
    /// Capabilities.
    pub caps: u32,
    /// Memory pages requested.
    pub memory_pages: u32,
    /// Maps: name, key size, value size, max entries.
    pub maps: Vec<(String, u32, u32, u32)>,
    /// Counter names.
    pub counters: Vec<String>,
}

impl From<&DecodedManifest<'_>> for ModuleManifest {
    fn from(d: &DecodedManifest<'_>) -> Self {
        ModuleManifest {
            name: d.name.to_owned(),
            version: d.version.to_owned(),
            hooks: d.hooks,
            caps: d.caps,
            memory_pages: d.memory_pages,
            maps: d
                .maps()
                .map(|m| (m.name.to_owned(), m.key_size, m.value_size, m.max_entries))
                .collect(),
            counters: d.counters().iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// A compiled module that passed the ABI checks.
#[derive(Debug)]
pub struct PolicyModule {
    /// The compiled code.
    pub module: Module,
    /// Its manifest.
    pub manifest: ModuleManifest,
    /// SHA-256 of the WebAssembly bytes.
    pub hash: [u8; 32],
    /// Whether it exports `pol_on_frames`.
    pub has_on_frames: bool,
}

/// The host imports a module may use, with their arity (checked again by the linker).
const IMPORTS: [&str; 9] = [
    "log",
    "counter_add",
    "map_lookup",
    "map_update",
    "map_delete",
    "now_ns",
    "frame_read",
    "rule_describe",
    "rate_class",
];

fn leb_u32(b: &[u8], at: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The payload of the custom section `name` in `wasm`. Total over any byte sequence.
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ModuleError> {
    if wasm.get(..8) != Some(b"\0asm\x01\0\0\0") {
        return Err(ModuleError::NotWasm);
    }
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb_u32(wasm, &mut at).ok_or(ModuleError::NotWasm)? as usize;
        let body = wasm
            .get(at..at.checked_add(size).ok_or(ModuleError::NotWasm)?)
            .ok_or(ModuleError::NotWasm)?;
        at += size;
        if id == 0 {
            let mut n = 0;
            let len = leb_u32(body, &mut n).ok_or(ModuleError::NotWasm)? as usize;
            let section_name = body.get(n..n + len).ok_or(ModuleError::NotWasm)?;
            if section_name == name.as_bytes() {
                return Ok(Some(&body[n + len..]));
            }
        }
    }
    Ok(None)
}

impl PolicyModule {
    /// Checks `module` (compiled from `wasm`) against the ABI: manifest, exports, imports.
    pub fn check(module: Module, wasm: &[u8], hash: [u8; 32]) -> Result<Self, ModuleError> {
        let section = custom_section(wasm, MANIFEST_SECTION)?.ok_or(ModuleError::NoManifest)?;
        let manifest =
            ModuleManifest::from(&DecodedManifest::decode(section).map_err(ModuleError::Manifest)?);
        let func =
            |name: &'static str, params: usize, results: usize| -> Result<bool, ModuleError> {
                match module.get_export(name) {
                    Some(ExternType::Func(f))
                        if f.params().len() == params && f.results().len() == results =>
                    {
                        Ok(true)
                    }
                    Some(_) => Err(ModuleError::Export(name)),
                    None => Ok(false),
                }
            };
        for (name, params, results) in [
            (MARKER_EXPORT, 0, 0),
            ("pol_io", 0, 1),
            ("pol_init", 1, 1),
            ("pol_on_new_flow", 1, 1),
        ] {
            if !func(name, params, results)? {
                return Err(ModuleError::Export(name));
            }
        }
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(ModuleError::Export("memory"));
        }
        let has_on_frames = func("pol_on_frames", 1, 1)?;
        for import in module.imports() {
            if import.module() != IMPORT_MODULE || !IMPORTS.contains(&import.name()) {
                return Err(ModuleError::Import(format!(
                    "{}::{}",
                    import.module(),
                    import.name()
                )));
            }
        }
        Ok(PolicyModule {
            module,
            manifest,
            hash,
            has_on_frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_section_walk_is_total() {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend_from_slice(&[0, 6, 3, b'a', b'b', b'c', 1, 2]);
        assert_eq!(custom_section(&wasm, "abc").unwrap(), Some(&[1u8, 2][..]));
        assert_eq!(custom_section(&wasm, "abd").unwrap(), None);
        for cut in 8..wasm.len() {
            assert!(custom_section(&wasm[..cut], "abc").is_err() || cut == 8);
        }
        assert!(custom_section(b"\0asm", "abc").is_err());
        assert!(custom_section(b"\0asm\x01\0\0\0\0\xff\xff\xff\xff\xff", "abc").is_err());
    }
}
