//! The causal structure of one replayed run, read from its trace.
//!
//! | link | from (row) | to (row) | how they are matched |
//! |---|---|---|---|
//! | `notify` | `dma_buf_invalidate_attachment` (the exporter's `invalidate_mappings` reaching one attachment, kernel `move_notify`) | the same row, on the importer's lane | `dev=` names the importer |
//! | `unmap` | `dma_buf_invalidate_attachment attach=N` | the next `dma_buf_unmap_attachment attach=N` | attachment id |
//! | `wake` | `dma_fence_signaled context=C seqno=S` | each later `dma_fence_wait_end` of the same fence on another task, before that task's next wait | fence `context:seqno` |
//!
//! Marks: the revoke starts at the first row with a `step=` argument (a
//! step of the exporter's revoke sequence, see `dmabuf_core::revoke`) and
//! returns at `monitor_revoke_returned`; every `hazard` row is a hazard.

use dmabuf_core::trace::Event;

/// What a link means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// invalidate → the importer's callback.
    Notify,
    /// invalidate → the importer's unmap.
    Unmap,
    /// fence signal → waiter wake-up.
    Wake,
}

impl LinkKind {
    /// Short name (flow names in Perfetto, CSS classes in the report).
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Notify => "invalidate-callback",
            LinkKind::Unmap => "invalidate-unmap",
            LinkKind::Wake => "signal-wake",
        }
    }
}

/// One arrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Meaning.
    pub kind: LinkKind,
    /// Index of the source event.
    pub from: usize,
    /// Index of the target event (for `Notify`, the source itself).
    pub to: usize,
    /// Lane name of the target (the importer for `Notify`, the target
    /// event's task otherwise).
    pub to_lane: String,
    /// Label.
    pub label: String,
}

/// The structure of a run.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    /// Arrows, in source order.
    pub links: Vec<Link>,
    /// Index of the first revoke step.
    pub revoke_start: Option<usize>,
    /// Index of `monitor_revoke_returned`.
    pub revoke_return: Option<usize>,
    /// Indices of `hazard` rows.
    pub hazards: Vec<usize>,
}

/// Whether `e` is a wait that ends with a `dma_fence_wait_end`.
fn is_fence_wait_end(e: &Event) -> bool {
    e.name == "dma_fence_wait_end"
}

/// Reads the links and marks of `events`.
pub fn analyse(events: &[Event]) -> Analysis {
    let mut a = Analysis::default();
    let tasks: Vec<&str> = events.iter().map(|e| e.who.as_str()).collect();
    for (i, e) in events.iter().enumerate() {
        match e.name {
            "dma_buf_invalidate_attachment" => {
                let attach = e.field("attach");
                let dev = e.field("dev").unwrap_or_default();
                let lane = if tasks.contains(&dev.as_str()) {
                    dev.clone()
                } else {
                    format!("{dev}-worker")
                };
                if dev.is_empty() || !tasks.contains(&lane.as_str()) {
                    // No lane for the importer: no arrow to draw.
                } else {
                    a.links.push(Link {
                        kind: LinkKind::Notify,
                        from: i,
                        to: i,
                        to_lane: lane,
                        label: format!("invalidate attach {}", attach.clone().unwrap_or_default()),
                    });
                }
                if let Some(at) = attach
                    && let Some(j) = events[i + 1..].iter().position(|u| {
                        u.name == "dma_buf_unmap_attachment"
                            && u.field("attach").as_deref() == Some(at.as_str())
                    })
                {
                    let j = i + 1 + j;
                    a.links.push(Link {
                        kind: LinkKind::Unmap,
                        from: i,
                        to: j,
                        to_lane: events[j].who.clone(),
                        label: format!("unmap attach {at}"),
                    });
                }
            }
            "dma_fence_signaled" => {
                let key = (e.field("context"), e.field("seqno"));
                // Each other task whose next fence-wait end after this row
                // is of this fence was woken by this signal.
                let mut seen: Vec<&str> = Vec::new();
                for (j, w) in events.iter().enumerate().skip(i + 1) {
                    if !is_fence_wait_end(w) || w.who == e.who || seen.contains(&w.who.as_str()) {
                        continue;
                    }
                    seen.push(&w.who);
                    if (w.field("context"), w.field("seqno")) == key {
                        a.links.push(Link {
                            kind: LinkKind::Wake,
                            from: i,
                            to: j,
                            to_lane: w.who.clone(),
                            label: format!(
                                "signal {}:{}",
                                key.0.clone().unwrap_or_default(),
                                key.1.clone().unwrap_or_default()
                            ),
                        });
                    }
                }
            }
            "monitor_revoke_returned" if a.revoke_return.is_none() => a.revoke_return = Some(i),
            "hazard" => a.hazards.push(i),
            _ => {}
        }
        if a.revoke_start.is_none() && e.field("step").is_some() {
            a.revoke_start = Some(i);
        }
    }
    a
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ev(seq: u64, who: &str, name: &'static str, args: &str) -> Event {
        Event {
            seq,
            ts_ns: 1_000_000_000 + seq * 10,
            who: who.into(),
            task: Some(who.len()),
            name,
            args: args.into(),
        }
    }

    /// A small revoke: lock, invalidate, an importer worker waiting on a
    /// fence, the engine signalling it, a late unmap, a hazard.
    pub(crate) fn sample() -> Vec<Event> {
        vec![
            ev(
                0,
                "gpu0",
                "dma_buf_attach",
                "exp_name=vfio_pci ino=1 attach=1 dev=gpu0",
            ),
            ev(1, "revoker", "dma_resv_lock", "ino=1 step=dma_resv_lock"),
            ev(
                2,
                "revoker",
                "dma_buf_invalidate_attachment",
                "ino=1 attach=1 dev=gpu0",
            ),
            ev(
                3,
                "gpu0-worker",
                "dma_fence_wait_start",
                "driver=gpu timeline=gpu0 context=1 seqno=2",
            ),
            ev(
                4,
                "revoker",
                "monitor_revoke_returned",
                "exporter=vfio-pci:vfio0 ranges=[0xe0000000+0x2000] mseq=2",
            ),
            ev(
                5,
                "dma:gpu0-gfx",
                "hazard",
                "class=AccessAfterRevoke accessor=gpu0 w space=bus addr=0xe0000000 mseq=4",
            ),
            ev(
                6,
                "dma:gpu0-gfx",
                "dma_fence_signaled",
                "driver=gpu timeline=gpu0 context=1 seqno=2",
            ),
            ev(
                7,
                "gpu0-worker",
                "dma_fence_wait_end",
                "driver=gpu timeline=gpu0 context=1 seqno=2",
            ),
            ev(
                8,
                "gpu0-worker",
                "dma_buf_unmap_attachment",
                "exp_name=vfio_pci ino=1 attach=1 mapping=2 dev=gpu0",
            ),
        ]
    }

    #[test]
    fn links_follow_attachments_and_fences() {
        let a = analyse(&sample());
        assert_eq!(a.revoke_start, Some(1));
        assert_eq!(a.revoke_return, Some(4));
        assert_eq!(a.hazards, vec![5]);
        let kinds: Vec<(LinkKind, usize, usize)> =
            a.links.iter().map(|l| (l.kind, l.from, l.to)).collect();
        assert_eq!(
            kinds,
            vec![
                (LinkKind::Notify, 2, 2),
                (LinkKind::Unmap, 2, 8),
                (LinkKind::Wake, 6, 7)
            ]
        );
        assert_eq!(a.links[0].to_lane, "gpu0");
        assert_eq!(a.links[2].to_lane, "gpu0-worker");
    }

    #[test]
    fn a_signal_of_another_fence_wakes_nobody() {
        let mut ev7 = sample();
        ev7[6] = ev(
            6,
            "dma:gpu0-gfx",
            "dma_fence_signaled",
            "driver=gpu timeline=gpu0 context=1 seqno=1",
        );
        let a = analyse(&ev7);
        assert!(a.links.iter().all(|l| l.kind != LinkKind::Wake));
    }
}
