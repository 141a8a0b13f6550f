//! Running a policy module offline over a capture (`policy test MODULE --pcap FILE`): every
//! frame is tracked by conntrack and judged as the datapath would judge it (a new flow or a
//! flowless frame through the module, the flow's later frames by its cached verdict).

use super::chain::{split_rule_handle, FailMode, PolicySet, PolicySpec};
use super::host::{HostConfig, LoadError, PolicyHost};
use bridge_core::conntrack::{Conntrack, ConntrackConfig, CtState, PacketMeta};
use bridge_core::policy::{BridgeOut, HookPoint, JudgeKind, PolicyFrame, PolicyHook, Verdict};
use bridge_core::time::Instant;
use bridge_core::{NetworkId, PortId};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::PcapError;
use policy_sdk::headers::{classify, ETH_IPV4};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an offline run failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The capture could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The capture is not a valid pcap or pcapng file.
    #[error("bad capture {0}")]
    Capture(PathBuf, #[source] PcapError),
    /// The module was refused.
    #[error("module refused")]
    Load(#[source] LoadError),
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Capture timestamp.
    pub time: Duration,
    /// The frame (Ethernet).
    pub bytes: Vec<u8>,
}

/// Reads a pcap or pcapng capture of Ethernet frames.
pub fn read_capture(path: &Path) -> Result<Vec<CapturedFrame>, OfflineError> {
    let data = std::fs::read(path).map_err(|e| OfflineError::Read(path.to_owned(), e))?;
    let bad = |e| OfflineError::Capture(path.to_owned(), e);
    let mut frames = Vec::new();
    if data.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(&data[..]).map_err(bad)?;
        while let Some(block) = r.next_block() {
            match block.map_err(bad)? {
                Block::EnhancedPacket(p) => frames.push(CapturedFrame {
                    time: p.timestamp,
                    bytes: p.data.into_owned(),
                }),
                Block::SimplePacket(p) => frames.push(CapturedFrame {
                    time: Duration::ZERO,
                    bytes: p.data.into_owned(),
                }),
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(&data[..]).map_err(bad)?;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(bad)?;
            frames.push(CapturedFrame {
                time: p.timestamp,
                bytes: p.data.into_owned(),
            });
        }
    }
    Ok(frames)
}

/// How captured frames are placed on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineOptions {
    /// The module's configuration.
    pub config: String,
    /// Its fail mode.
    pub fail_mode: FailMode,
    /// Guest MACs: a frame from the `i`-th comes in on port `i + 1`, one to it goes out there;
    /// other frames come in on port 0 (the uplink or gateway).
    pub guests: Vec<[u8; 6]>,
    /// Network of every frame.
    pub network: u32,
    /// Hook point of every frame.
    pub hook: HookPoint,
}

/// What happened to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameResult {
    /// Its conntrack state (`None`: not tracked).
    pub ct: Option<CtState>,
    /// Its verdict.
    pub verdict: Verdict,
    /// Whether the verdict came from the flow's cache.
    pub cached: bool,
    /// Whether the rate limit let it pass.
    pub admitted: bool,
}

fn port_of(guests: &[[u8; 6]], mac: Option<&[u8]>) -> Option<u32> {
    let mac = mac?;
    guests
        .iter()
        .position(|g| g[..] == *mac)
        .map(|i| i as u32 + 1)
}

/// Loads `wasm` with `opts` into a fresh host and judges `frames` in order.
pub fn run(
    wasm: Vec<u8>,
    opts: &OfflineOptions,
    frames: &[CapturedFrame],
) -> Result<(PolicyHost, Vec<FrameResult>), OfflineError> {
    let host = PolicyHost::new(HostConfig::default()).map_err(OfflineError::Load)?;
    let spec = PolicySpec {
        name: "module".into(),
        wasm: wasm.into(),
        config: opts.config.clone(),
        fail_mode: opts.fail_mode,
    };
    host.apply(PolicySet {
        operator: vec![spec],
        ..PolicySet::default()
    })
    .map_err(OfflineError::Load)?;
    for port in 0..=opts.guests.len() as u32 {
        host.set_port_network(port, Some(opts.network));
    }
    let ct: Conntrack<Verdict> = Conntrack::new(ConntrackConfig::default());
    let mut worker = host.worker();
    let mut results = Vec::with_capacity(frames.len());
    for f in frames {
        let now = Instant::from_micros(f.time.as_micros() as i64);
        let now_ns = f.time.as_nanos() as u64;
        let info = classify(&f.bytes);
        let tracked = (info.ethertype == ETH_IPV4).then(|| {
            PacketMeta::parse_ipv4(opts.network, &f.bytes[usize::from(info.l3_off)..])
                .ok()
                .and_then(|m| ct.track(now, &m).ok())
        });
        let ingress = port_of(&opts.guests, f.bytes.get(6..12));
        let dst = port_of(&opts.guests, f.bytes.get(..6));
        let ct_state = tracked.map(|t| t.map_or(CtState::Invalid, |t| t.state));
        let flow = tracked.flatten().and_then(|t| t.flow.map(|fl| (t, fl)));
        let cached = flow.and_then(|(t, _)| t.verdict);
        let verdict = match cached {
            Some(v) => v,
            None => {
                let kind = match ct_state {
                    Some(CtState::New) | None => JudgeKind::NewFlow,
                    _ => JudgeKind::EveryFrame,
                };
                let frame = PolicyFrame {
                    frame: &f.bytes,
                    frame_len: f.bytes.len(),
                    hook: opts.hook,
                    kind,
                    network: NetworkId(opts.network),
                    ingress_port: PortId(ingress.unwrap_or(0)),
                    from_guest: ingress.is_some(),
                    bridge_out: match dst {
                        Some(p) => BridgeOut::Port(PortId(p)),
                        None if f.bytes.first().is_some_and(|b| b & 1 == 1) => BridgeOut::Flood,
                        None => BridgeOut::Gateway,
                    },
                    to_guest: dst.is_some(),
                    flow: flow.map(|_| results.len() as u64 + 1),
                    ct: ct_state,
                };
                let mut v = [Verdict::UNJUDGED];
                worker.begin_batch();
                worker.judge(now_ns, &[frame], &mut v);
                if let (true, Some((_, fl))) = (v[0].cache, flow) {
                    ct.set_verdict(&fl, v[0]);
                }
                v[0]
            }
        };
        let admitted = worker.admit(
            now_ns,
            &verdict,
            PortId(ingress.unwrap_or(0)),
            f.bytes.len(),
        );
        worker.end_batch();
        results.push(FrameResult {
            ct: ct_state,
            verdict,
            cached: cached.is_some(),
            admitted,
        });
    }
    Ok((host, results))
}

/// One line per frame, then the module's counters.
pub fn render(host: &PolicyHost, frames: &[CapturedFrame], results: &[FrameResult]) -> String {
    let generation = host.generation();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:>6} {:<12} {:<10} {:<7} rules",
        "frame", "len", "ct", "verdict", "source"
    );
    for (i, (f, r)) in frames.iter().zip(results).enumerate() {
        let ct = r.ct.map_or("untracked".to_owned(), |c| format!("{c:?}"));
        let mut action = format!("{:?}", r.verdict.action).to_uppercase();
        if !r.admitted {
            action = "RATE-DROP".into();
        }
        let source = if r.cached { "cached" } else { "module" };
        let rules: Vec<String> = r
            .verdict
            .rules
            .iter()
            .filter_map(|h| split_rule_handle(*h))
            .map(|(slot, id)| {
                let text = generation.entries.get(slot).and_then(|e| e.rules.get(&id));
                format!("{id} ({})", text.map_or("", String::as_str))
            })
            .collect();
        let _ = writeln!(
            out,
            "{:>6} {:>6} {ct:<12} {action:<10} {source:<7} {}",
            i + 1,
            f.bytes.len(),
            rules.join("; ")
        );
    }
    out.push('\n');
    out.push_str(&host.render_list());
    out
}
