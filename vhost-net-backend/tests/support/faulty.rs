//! A module that faults on purpose, for the fail-mode and quarantine tests (included by path
//! where needed, so test binaries without fault tests do not carry it).

/// A hand-written module: continues every frame, but traps (or loops forever, with
/// `fault = "loop"`) on every call, or with `trigger = Some((offset, value))` on calls whose
/// first frame descriptor has the 32-bit `value` at byte `offset` (16: the ingress port, 8:
/// the frame length), which the canary's golden frames never have.
pub fn faulty_wat(fault: &str, trigger: Option<(usize, u32)>) -> Vec<u8> {
    use policy_sdk::abi::io_off;
    use policy_sdk::manifest::{encode, encoded_len, Manifest};
    const M: Manifest<'static> = Manifest {
        name: "faulty",
        version: "1",
        hooks: 0b11,
        caps: 0,
        memory_pages: 2,
        maps: &[],
        counters: &[],
    };
    const LEN: usize = encoded_len(&M);
    let manifest: String = encode::<LEN>(&M)
        .iter()
        .map(|b| format!("\\{b:02x}"))
        .collect();
    let body = match fault {
        "trap" => "unreachable",
        _ => "(loop $forever (br $forever))",
    };
    let cond = match trigger {
        None => "(i32.const 1)".to_owned(),
        Some((offset, value)) => format!(
            "(i32.eq (i32.load (i32.const {})) (i32.const {value}))",
            io_off::DESC + offset
        ),
    };
    let text = format!(
        r#"(module
          (memory (export "memory") 2)
          (func (export "policy_abi_v1"))
          (func (export "pol_io") (result i32) (i32.const 0))
          (func (export "pol_init") (param i32) (result i32) (i32.const 0))
          (func (export "pol_on_new_flow") (param i32) (result i32)
            (if {cond} (then {body}))
            (local.get 0))
          (@custom "pol_manifest" "{manifest}"))"#
    );
    wat::parse_str(text).expect("the faulty module assembles")
}
