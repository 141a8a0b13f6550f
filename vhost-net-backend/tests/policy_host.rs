//! The policy host through wasmtime: every policy module built for wasm32 and judged by a
//! worker as the datapath would, hot reload under traffic, faults and their fail modes.

#[path = "support/faulty.rs"]
mod faulty;
mod support;

use bridge_core::conntrack::CtState;
use bridge_core::policy::{
    Action, BridgeOut, HookPoint, JudgeKind, PolicyFrame, PolicyHook, Verdict,
};
use bridge_core::{NetworkId, PortId};
use faulty::faulty_wat;
use policy_sdk::frames::{
    arp, arp_request, dhcp_reply, dhcp_request, ping4, tcp4, udp4, Endpoint, TCP_ACK, TCP_SYN,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::policy_wasm::policy_wasm;
use vhost_net_backend::policy::engine::LoadPath;
use vhost_net_backend::policy::{
    EngineConfig, FailMode, HostConfig, LoadError, PolicyHost, PolicySet, PolicySpec, PolicyWorker,
    Tier,
};

const GW: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [192, 168, 122, 1]);
const VM3: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 3], [192, 168, 122, 10]);
const VM4: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 4], [192, 168, 122, 44]);
const NET: Endpoint = Endpoint::new([0x52, 0x54, 0, 0, 0, 1], [203, 0, 113, 5]);

fn spec(name: &str, wasm: Vec<u8>, config: &str, fail_mode: FailMode) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        wasm: wasm.into(),
        config: config.into(),
        fail_mode,
    }
}

/// A host whose call deadline (1 s) a loaded test machine's preemption cannot reach: these
/// tests check verdicts, not timeouts (the looping-module test keeps the default).
fn host() -> PolicyHost {
    let mut config = HostConfig::default();
    config.limits.deadline_ticks = 1000;
    PolicyHost::new(config).unwrap()
}

/// A host with one operator policy from crate `krate`, and a worker.
fn load_one(name: &str, krate: &str, config: &str) -> (PolicyHost, PolicyWorker) {
    let h = host();
    h.apply(set(vec![spec(
        name,
        policy_wasm(krate),
        config,
        FailMode::Closed,
    )]))
    .unwrap();
    let w = h.worker();
    (h, w)
}

fn set(specs: Vec<PolicySpec>) -> PolicySet {
    PolicySet {
        operator: specs,
        ..PolicySet::default()
    }
}

/// A frame as the datapath hands it over: from `port` (a guest's unless 0), to `out`.
fn frame(bytes: &[u8], port: u32, out: BridgeOut) -> PolicyFrame<'_> {
    PolicyFrame {
        frame: bytes,
        frame_len: bytes.len(),
        hook: HookPoint::PortIn,
        kind: JudgeKind::NewFlow,
        network: NetworkId(0),
        ingress_port: PortId(port),
        from_guest: port != 0,
        bridge_out: out,
        to_guest: matches!(out, BridgeOut::Port(_)),
        flow: Some(1),
        ct: Some(CtState::New),
    }
}

fn judge(w: &mut impl PolicyHook, frames: &[PolicyFrame<'_>]) -> Vec<Verdict> {
    let mut v = vec![Verdict::UNJUDGED; frames.len()];
    w.begin_batch();
    w.judge(1, frames, &mut v);
    v
}

fn actions(v: &[Verdict]) -> Vec<Action> {
    v.iter().map(|v| v.action).collect()
}

#[test]
fn allow_all_accepts_and_counts_its_rule() {
    let (h, mut w) = load_one("all", "allow-all", "");
    let bytes = tcp4(VM3, VM4, 1, 2, TCP_SYN);
    let v = judge(&mut w, &[frame(&bytes, 3, BridgeOut::Port(PortId(4)))]);
    assert_eq!(v[0].action, Action::Accept);
    assert!(v[0].cache);
    assert!(w.admit(1, &v[0], PortId(3), bytes.len()));
    // Rule hits reach the shared counters at the end of the batch.
    w.end_batch();
    assert!(
        h.render_list()
            .contains(&format!("1 {:>10}  accept all", bytes.len())),
        "{}",
        h.render_list()
    );
}

#[test]
fn libvirt_nat_through_wasmtime() {
    let cfg = "network 192.168.122.0/24\ngateway 192.168.122.1";
    let (_, mut w) = load_one("nat", "libvirt-nat", cfg);
    let dns = udp4(VM3, GW, 5000, 53, b"q");
    let out = tcp4(VM3, NET, 5000, 443, TCP_SYN);
    let inbound = tcp4(NET, VM3, 443, 5000, TCP_SYN);
    let dhcp = dhcp_request(VM3.mac);
    let mut reply = frame(&inbound, 0, BridgeOut::Port(PortId(3)));
    reply.ct = Some(CtState::Reply);
    let v = judge(
        &mut w,
        &[
            frame(&dns, 3, BridgeOut::Gateway),
            frame(&out, 3, BridgeOut::Gateway),
            frame(&inbound, 0, BridgeOut::Port(PortId(3))),
            reply,
            frame(&dhcp, 3, BridgeOut::Flood),
        ],
    );
    assert_eq!(
        actions(&v),
        [
            Action::Accept,
            Action::Accept,
            Action::Reject,
            Action::Accept,
            Action::Accept
        ]
    );
}

#[test]
fn clean_traffic_stops_a_spoofer_not_its_neighbour() {
    let h = host();
    let cfg = "port 3 mac 52:54:00:00:00:03 ip 192.168.122.10\nport 4 mac 52:54:00:00:00:04\n";
    h.apply(set(vec![spec(
        "clean",
        policy_wasm("clean-traffic"),
        cfg,
        FailMode::Closed,
    )]))
    .unwrap();
    h.map_update("clean", "leases", &4u32.to_le_bytes(), &VM4.ip)
        .unwrap();
    let mut w = h.worker();
    let good3 = tcp4(VM3, GW, 1, 2, TCP_SYN);
    let good4 = tcp4(VM4, GW, 1, 2, TCP_SYN);
    let mac_spoof = tcp4(VM3, GW, 1, 2, TCP_SYN);
    let arp_spoof = arp(2, Endpoint { ip: GW.ip, ..VM4 }, VM3);
    let dhcp_server = dhcp_reply(VM4, VM3.mac);
    let v = judge(
        &mut w,
        &[
            frame(&good3, 3, BridgeOut::Gateway),
            frame(&good4, 4, BridgeOut::Gateway),
            frame(&mac_spoof, 4, BridgeOut::Gateway),
            frame(&arp_spoof, 4, BridgeOut::Port(PortId(3))),
            frame(&dhcp_server, 4, BridgeOut::Flood),
            frame(&arp_request(VM4, GW.ip), 4, BridgeOut::Flood),
        ],
    );
    assert_eq!(
        actions(&v),
        [
            Action::Accept,
            Action::Accept,
            Action::Drop,
            Action::Drop,
            Action::Drop,
            Action::Accept
        ]
    );
    assert!(
        v.iter().all(|v| !v.cache),
        "clean-traffic judges every frame"
    );
    // The lease map survives a config-only reload.
    let cfg2 = format!("{cfg}port 5 mac 52:54:00:00:00:05\n");
    let r = h
        .apply(set(vec![spec(
            "clean",
            policy_wasm("clean-traffic"),
            &cfg2,
            FailMode::Closed,
        )]))
        .unwrap();
    assert_eq!(
        r.loaded,
        [("clean".to_owned(), LoadPath::Cached)],
        "config-only reload reuses the module"
    );
    let v = judge(&mut w, &[frame(&good4, 4, BridgeOut::Gateway)]);
    assert_eq!(
        (v[0].action, v[0].generation),
        (Action::Accept, r.generation)
    );
}

const SG: &str = "\
group web ports 3
ingress ipv4 tcp 22 0.0.0.0/0
egress ipv4 any any 0.0.0.0/0
";

#[test]
fn security_group_is_stateful_default_deny() {
    let (_, mut w) = load_one("sg", "security-group", SG);
    let ssh = tcp4(NET, VM3, 9, 22, TCP_SYN);
    let http = tcp4(NET, VM3, 9, 80, TCP_SYN);
    let mut reply = frame(&http, 0, BridgeOut::Port(PortId(3)));
    reply.ct = Some(CtState::Established);
    let v = judge(
        &mut w,
        &[
            frame(&ssh, 0, BridgeOut::Port(PortId(3))),
            frame(&http, 0, BridgeOut::Port(PortId(3))),
            reply,
            frame(&tcp4(VM3, NET, 9, 80, TCP_SYN), 3, BridgeOut::Gateway),
            frame(&ping4(VM4, VM3), 4, BridgeOut::Port(PortId(3))),
        ],
    );
    assert_eq!(
        actions(&v),
        [
            Action::Accept,
            Action::Drop,
            Action::Accept,
            Action::Accept,
            Action::Drop
        ]
    );
}

#[test]
fn rule_hits_are_exact_as_frames_alternate_between_verdicts() {
    let (h, mut w) = load_one("sg", "security-group", SG);
    let ssh = tcp4(NET, VM3, 9, 22, TCP_SYN);
    let http = tcp4(NET, VM3, 9, 80, TCP_SYN);
    let out = BridgeOut::Port(PortId(3));
    let v = judge(&mut w, &[frame(&ssh, 0, out), frame(&http, 0, out)]);
    assert_eq!(actions(&v), [Action::Accept, Action::Drop]);
    // Runs of one verdict and single frames, of lengths 100 (ssh) and 1000 (http).
    for k in [0, 1, 1, 0, 0, 0, 1, 0] {
        w.admit(1, &v[k], PortId(0), [100, 1000][k]);
    }
    w.end_batch();
    let list = h.render_list();
    assert!(
        list.contains(&format!(" {:>6} {:>10} {:>10}  ingress", 10, 5, 500)),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            " {:>6} {:>10} {:>10}  default ingress DROP",
            3, 3, 3000
        )),
        "{list}"
    );
}

#[test]
fn rate_limit_classes_are_policed_per_port() {
    let cfg = "class 1 pps 5 bps 0\nport 3 class 1\n";
    let (_, mut w) = load_one("rl", "rate-limit", cfg);
    let bytes = udp4(VM3, GW, 1, 53, b"x");
    let other = udp4(VM4, GW, 1, 53, b"x");
    let v = judge(
        &mut w,
        &[
            frame(&bytes, 3, BridgeOut::Gateway),
            frame(&other, 4, BridgeOut::Gateway),
        ],
    );
    assert!(v[0].rate_class.is_some() && v[1].rate_class.is_none());
    let passed = (0..20)
        .filter(|_| w.admit(0, &v[0], PortId(3), bytes.len()))
        .count();
    assert_eq!(passed, 5, "one second of burst at 5 packets/s");
    assert!(
        w.admit(200_000_000, &v[0], PortId(3), bytes.len()),
        "refilled after 200 ms"
    );
    assert!(
        (0..20).all(|_| w.admit(0, &v[1], PortId(4), other.len())),
        "port 4 is not limited"
    );
    assert!(
        w.admit(0, &v[0], PortId(7), bytes.len()),
        "each port has its own bucket"
    );
}

/// Quarantine after 3 faults; a 200 ms call deadline, above a loaded machine's preemption.
fn quick_faults() -> HostConfig {
    let mut config = HostConfig {
        fault_threshold: 3,
        fault_window: Duration::from_secs(60),
        ..HostConfig::default()
    };
    config.limits.deadline_ticks = 200;
    config
}

#[test]
fn a_module_that_faults_on_every_call_is_refused_by_the_canary() {
    let h = host();
    h.apply(set(vec![spec(
        "all",
        policy_wasm("allow-all"),
        "",
        FailMode::Closed,
    )]))
    .unwrap();
    let before = h.generation_id();
    for fault in ["trap", "loop"] {
        let err = h
            .apply(set(vec![spec(
                "bad",
                faulty_wat(fault, None),
                "",
                FailMode::Closed,
            )]))
            .unwrap_err();
        assert!(matches!(err, LoadError::Golden(..)), "{err}");
    }
    assert_eq!(h.generation_id(), before, "the previous generation stays");
}

fn fault_run(fault: &str, mode: FailMode, expect: Action) {
    let h = PolicyHost::new(quick_faults()).unwrap();
    h.apply(set(vec![spec(
        "all",
        policy_wasm("allow-all"),
        "",
        FailMode::Closed,
    )]))
    .unwrap();
    let good = h.generation_id();
    let faulty = vec![spec("faulty", faulty_wat(fault, Some((16, 666))), "", mode)];
    let bad = h.apply(set(faulty)).unwrap().generation;
    let mut w = h.worker();
    let bytes = tcp4(VM3, VM4, 1, 2, TCP_SYN);
    let ok = judge(&mut w, &[frame(&bytes, 3, BridgeOut::Port(PortId(4)))]);
    assert_eq!(ok[0].action, Action::Accept, "frames from other ports pass");
    for round in 0..3 {
        let v = judge(&mut w, &[frame(&bytes, 666, BridgeOut::Port(PortId(4))); 4]);
        assert_eq!(v.len(), 4);
        for v in &v {
            assert_eq!(
                (v.action, v.cache, v.generation),
                (expect, false, bad),
                "round {round}"
            );
        }
    }
    let stats = h.stats("faulty").unwrap();
    let faults = stats.traps.load(Ordering::Relaxed) + stats.timeouts.load(Ordering::Relaxed);
    assert_eq!(faults, 3);
    assert_eq!(stats.quarantines.load(Ordering::Relaxed), 1);
    assert_eq!(stats.rebuilds.load(Ordering::Relaxed), 3);
    // Quarantined: the host rolled back to the last good generation's policies.
    assert!(h.generation_id() > bad);
    let v = judge(&mut w, &[frame(&bytes, 666, BridgeOut::Port(PortId(4)))]);
    assert_eq!(v[0].action, Action::Accept);
    assert_eq!(h.generation().entries[0].spec.name, "all");
    assert_ne!(good, h.generation_id());
    // The same module is refused until it changes.
    let again = h.apply(set(vec![spec(
        "faulty",
        faulty_wat(fault, Some((16, 666))),
        "",
        mode,
    )]));
    assert!(matches!(again, Err(LoadError::Quarantined(_))));
}

#[test]
fn a_trapping_module_fails_closed_then_is_quarantined() {
    fault_run("trap", FailMode::Closed, Action::Drop);
}

#[test]
fn a_looping_module_times_out_fails_open_then_is_quarantined() {
    fault_run("loop", FailMode::Open, Action::Accept);
}

#[test]
fn limits_refuse_oversized_modules_and_memory() {
    let small = HostConfig {
        engine: EngineConfig {
            max_module_bytes: 1000,
            ..EngineConfig::default()
        },
        ..HostConfig::default()
    };
    let h = PolicyHost::new(small).unwrap();
    let err = h
        .apply(set(vec![spec(
            "all",
            policy_wasm("allow-all"),
            "",
            FailMode::Closed,
        )]))
        .unwrap_err();
    assert!(
        err.to_string().contains("allow-all") || matches!(err, LoadError::Module(..)),
        "{err}"
    );
    let mut tight = HostConfig::default();
    tight.limits.memory_pages = 4;
    let h = PolicyHost::new(tight).unwrap();
    let err = h
        .apply(set(vec![spec(
            "sg",
            policy_wasm("security-group"),
            SG,
            FailMode::Closed,
        )]))
        .unwrap_err();
    assert!(matches!(err, LoadError::Canary(..)), "{err}");
}

#[test]
fn precompiled_artifacts_load_without_compiling() {
    let dir = std::env::temp_dir().join(format!("policy-cache-{}", std::process::id()));
    let cfg = HostConfig {
        engine: EngineConfig {
            cache_dir: Some(dir.clone()),
            ..EngineConfig::default()
        },
        ..HostConfig::default()
    };
    let wasm = policy_wasm("security-group");
    let first = PolicyHost::new(cfg.clone())
        .unwrap()
        .apply(set(vec![spec("sg", wasm.clone(), SG, FailMode::Closed)]))
        .unwrap();
    assert_eq!(first.loaded[0].1, LoadPath::Compiled);
    let second = PolicyHost::new(cfg)
        .unwrap()
        .apply(set(vec![spec("sg", wasm, SG, FailMode::Closed)]))
        .unwrap();
    assert_eq!(second.loaded[0].1, LoadPath::Precompiled);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn chains_run_operator_then_network_policies() {
    let h = host();
    let nat = "network 192.168.122.0/24\ngateway 192.168.122.1";
    let mut s = set(vec![spec(
        "nat",
        policy_wasm("libvirt-nat"),
        nat,
        FailMode::Closed,
    )]);
    s.networks.insert(
        7,
        vec![spec(
            "sg7",
            policy_wasm("security-group"),
            SG,
            FailMode::Closed,
        )],
    );
    h.apply(s).unwrap();
    let mut w = h.worker();
    let http = tcp4(VM4, VM3, 9, 80, TCP_SYN);
    let mut in7 = frame(&http, 4, BridgeOut::Port(PortId(3)));
    in7.network = NetworkId(7);
    let v = judge(&mut w, &[frame(&http, 4, BridgeOut::Port(PortId(3))), in7]);
    // The operator's ACCEPT ends its tier; network 7's security group still denies.
    assert_eq!(actions(&v), [Action::Accept, Action::Drop]);
    assert_eq!(
        v[1].rules.iter().filter(|r| **r != 0).count(),
        2,
        "both modules' rules are counted"
    );
    h.unload("sg7").unwrap();
    let v = judge(&mut w, &[in7]);
    assert_eq!(v[0].action, Action::Accept);
}

#[test]
fn reloads_under_traffic_judge_every_frame_by_exactly_one_generation() {
    let h = host();
    let allow = spec("p", policy_wasm("allow-all"), "", FailMode::Closed);
    let sg = spec(
        "p",
        policy_wasm("security-group"),
        "group g ports 9\negress ipv4 any any 0.0.0.0/0",
        FailMode::Closed,
    );
    // Compile both once; the reloads below then only instantiate, canary and publish.
    h.apply(set(vec![sg.clone()])).unwrap();
    h.apply(set(vec![allow.clone()])).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    const RELOADS: u64 = 40;
    let reloader = {
        let (h, done) = (h.clone(), done.clone());
        std::thread::spawn(move || {
            for n in 0..RELOADS {
                let next = if n % 2 == 0 {
                    sg.clone()
                } else {
                    allow.clone()
                };
                h.apply(set(vec![next])).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut w = h.worker();
    let frames: Vec<Vec<u8>> = (0..64u16)
        .map(|i| udp4(VM3, NET, 1000 + i, 53, b"x"))
        .collect();
    let batch: Vec<PolicyFrame<'_>> = frames
        .iter()
        .map(|f| frame(f, 9, BridgeOut::Gateway))
        .collect();
    let (mut judged, mut last_gen, mut swaps) = (0usize, 0u64, 0usize);
    while !done.load(Ordering::Acquire) {
        let v = judge(&mut w, &batch);
        judged += v.len();
        let g = v[0].generation;
        assert!(
            v.iter().all(|x| x.generation == g),
            "one generation per batch"
        );
        assert!(g >= last_gen, "generations only move forward");
        swaps += usize::from(g != last_gen);
        last_gen = g;
        assert!(
            v.iter().all(|x| x.action == Action::Accept && x.cache),
            "no frame lost to a reload: {v:?}"
        );
        let rules: Vec<u32> = v.iter().map(|x| x.rules[0]).collect();
        assert!(
            rules.iter().all(|r| *r == rules[0] && *r != 0),
            "every frame judged by the same module"
        );
    }
    reloader.join().unwrap();
    assert_eq!(judged % 64, 0);
    assert!(swaps > 5, "the worker saw {swaps} of {RELOADS} generations");
    assert_eq!(
        h.stats("p").unwrap().fail_applied.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn policy_file_watch_applies_changes() {
    use vhost_net_backend::policy::watch::PolicyFileWatch;
    let dir = std::env::temp_dir().join(format!("policy-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("allow_all.wasm"), policy_wasm("allow-all")).unwrap();
    std::fs::write(dir.join("sg.wasm"), policy_wasm("security-group")).unwrap();
    let file = dir.join("policies.toml");
    std::fs::write(
        &file,
        "[[policy]]\nname = \"a\"\nmodule = \"allow_all.wasm\"\n",
    )
    .unwrap();
    let h = host();
    let mut watch = PolicyFileWatch::new(&file);
    let g1 = watch.poll(&h).unwrap().unwrap().generation;
    assert!(watch.poll(&h).unwrap().is_none(), "unchanged");
    std::fs::write(dir.join("sg.conf"), SG).unwrap();
    let text = "[[policy]]\nname = \"a\"\nmodule = \"allow_all.wasm\"\n\n[[policy]]\nname = \"sg\"\nnetwork = 2\nmodule = \"sg.wasm\"\nconfig_file = \"sg.conf\"\nfail_mode = \"baseline\"\n";
    std::fs::write(&file, text).unwrap();
    let r = watch.poll(&h).unwrap().unwrap();
    assert!(r.generation > g1);
    assert_eq!(r.loaded.len(), 1, "the unchanged policy keeps its entry");
    assert_eq!(h.fail_mode("sg"), Some(FailMode::Baseline));
    assert!(matches!(h.generation().entries[1].tier, Tier::Network(2)));
    std::fs::write(
        &file,
        "[[policy]]\nname = \"a\"\nmodule = \"missing.wasm\"\n",
    )
    .unwrap();
    assert!(watch.poll(&h).is_err());
    assert_eq!(
        h.generation().id,
        r.generation,
        "a bad file changes nothing"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn arp_is_judged_without_a_flow() {
    let cfg = "port 3 mac 52:54:00:00:00:03 ip 192.168.122.10";
    let (_, mut w) = load_one("clean", "clean-traffic", cfg);
    let req = arp_request(VM3, GW.ip);
    let mut f = frame(&req, 3, BridgeOut::Flood);
    f.flow = None;
    f.ct = None;
    assert_eq!(judge(&mut w, &[f])[0].action, Action::Accept);
}

#[test]
fn the_stage_passes_an_established_flow_by_its_cached_verdict_but_never_a_malformed_frame() {
    use bridge_core::time::Instant;
    use vhost_net_backend::datapath::policy::{Check, FrameCtx, Outcome, PolicyPlane, PolicyStage};

    let (h, _) = load_one("all", "allow-all", "");
    let mut stage = PolicyStage::new(Arc::new(PolicyPlane::new(h)), HookPoint::PortIn);
    let out = FrameCtx {
        ingress: PortId(3),
        network: NetworkId(0),
        from_guest: true,
        out: BridgeOut::Port(PortId(4)),
        to_guest: true,
    };
    let back = FrameCtx {
        ingress: PortId(4),
        out: BridgeOut::Port(PortId(3)),
        ..out
    };
    let now = Instant::from_millis(1);
    let ack = tcp4(VM3, VM4, 40000, 22, TCP_ACK);
    assert!(stage.begin_batch());
    // The SYN opens the flow and is judged; the SYN+ACK passes by the flow's verdict.
    let syn = tcp4(VM3, VM4, 40000, 22, TCP_SYN);
    assert_eq!(
        stage.check(now, out.ingress, out.network, &syn, syn.len(), || out),
        Check::Later
    );
    assert_eq!(stage.judge_pending(now), [Outcome::PASS]);
    let syn_ack = tcp4(VM4, VM3, 22, 40000, TCP_SYN | TCP_ACK);
    assert_eq!(
        stage.check(
            now,
            back.ingress,
            back.network,
            &syn_ack,
            syn_ack.len(),
            || back
        ),
        Check::Now(Outcome::PASS)
    );
    // The ACK that establishes the flow is tracked, the next from the flow cache.
    for _ in 0..2 {
        assert_eq!(
            stage.check(now, out.ingress, out.network, &ack, ack.len(), || out),
            Check::Now(Outcome::PASS)
        );
    }
    // So is the same ACK with an 802.1Q tag.
    let mut tagged = ack.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    assert_eq!(
        stage.check(now, out.ingress, out.network, &tagged, tagged.len(), || out),
        Check::Now(Outcome::PASS)
    );
    // Malformed frames of the flow are judged (as invalid), never passed by its verdict.
    let mut bad_checksum = ack.clone();
    bad_checksum[24] ^= 0x40;
    let mut bad_offset = ack.clone();
    bad_offset[46] = 0x40;
    let malformed: [(&[u8], usize); 4] = [
        (&bad_checksum, ack.len()),
        (&bad_offset, ack.len()),
        (&ack[..40], ack.len()),
        (&ack, 14 + 39),
    ];
    for (head, len) in malformed {
        assert_eq!(
            stage.check(now, out.ingress, out.network, head, len, || out),
            Check::Later
        );
    }
    assert_eq!(stage.judge_pending(now), [Outcome::PASS; 4]);
    stage.end_batch();
}
