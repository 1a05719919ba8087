//! The case list: one list, two back ends (the probe in the guest kernel and
//! [`crate::model`] on the project's ABI layer). The probe must report
//! exactly these ids for its part; the harness refuses anything else.
//!
//! The area of a case is its id up to the first dot.

dmabuf_core::named_enum! {
    /// Which boot a case runs in.
    ///
    /// `name()`: its name on the kernel command line and in the serial framing.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Part {
        /// The dma-buf / sync_file ABI (pc machine, system heap, udmabuf, vgem).
        Abi => "abi",
        /// The VFIO exporter (q35, intel-iommu, edu device bound to vfio-pci).
        Vfio => "vfio",
        /// The test importer module (`kmod/`) against the VFIO exporter's
        /// revoke: the same machine as [`Part::Vfio`].
        Kmod => "kmod",
    }
}

impl Part {
    /// The case ids of this part, in the order the probe runs them.
    pub fn cases(self) -> &'static [&'static str] {
        match self {
            Part::Abi => ABI_CASES,
            Part::Vfio => VFIO_CASES,
            Part::Kmod => KMOD_CASES,
        }
    }
}

/// The area of a case id (`sync`, `name`, `vfio`, ...); for the test
/// importer's cases, `kmod.<mode>` (`kmod.odp`, `kmod.bad`).
pub fn area(id: &str) -> &str {
    if let Some(rest) = id.strip_prefix("kmod.") {
        return match rest.find('.') {
            Some(i) => &id[..5 + i],
            None => id,
        };
    }
    id.split('.').next().unwrap_or(id)
}

/// Cases of the ABI boot.
pub const ABI_CASES: &[&str] = &[
    "sync.end_without_start",
    "sync.flags_1",
    "sync.flags_2",
    "sync.flags_3",
    "sync.flags_5",
    "sync.flags_6",
    "sync.flags_7",
    "sync.flags_0",
    "sync.flags_4",
    "sync.flags_8",
    "sync.flags_9",
    "sync.read_bit32",
    "sync.read_bit63",
    "sync.flags_all",
    "sync.flags_0x17",
    "sync.null",
    "sync.wrong_size",
    "name.a.before",
    "name.a.len31",
    "name.a.len32_keeps_old",
    "name.a.empty",
    "name.a.bad_pointer",
    "name.a.null",
    "name.b.before",
    "name.b.len31",
    "name.b.len32_keeps_old",
    "name.b.empty",
    "name.b.bad_pointer",
    "name.b.null",
    "name.link_unnamed",
    "name.link_named",
    "name.link_empty_name",
    "name.readonly_fd",
    "name.non_utf8",
    "name.whitespace",
    "fdinfo.system_rw",
    "fdinfo.keys",
    "fdinfo.count_after_dup",
    "fdinfo.system_ro",
    "fdinfo.system_wo_nocloexec",
    "heap.len_1",
    "heap.len_0",
    "heap.heap_flags_1",
    "heap.fd_flags_nonblock",
    "heap.fd_flags_append",
    "heap.len_5000_rounds_up",
    "seek.end_0",
    "seek.set_0",
    "seek.cur_0",
    "seek.set_1",
    "seek.end_1",
    "seek.end_minus_1",
    "rw.read",
    "rw.write",
    "rw.pread",
    "rw.pwrite",
    "poll.idle_in",
    "poll.idle_out",
    "poll.idle_inout",
    "poll.idle_pri",
    "mmap.shared_rw",
    "mmap.shared_ro",
    "mmap.private",
    "mmap.offset_1_page",
    "mmap.past_end",
    "mmap.too_long",
    "mmap.prot_exec",
    "mmap.ro_fd_write",
    "mmap.ro_fd_read",
    "export.flags_1",
    "export.flags_2",
    "export.flags_3",
    "export.flags_0",
    "export.flags_4",
    "export.flags_5",
    "export.flags_0x80000001",
    "export.input_fd_ignored",
    "export.null",
    "import.flags_1",
    "import.flags_2",
    "import.flags_3",
    "import.flags_0",
    "import.flags_4",
    "import.flags_9",
    "import.flags_0x80000001",
    "import.fd_minus_1",
    "import.fd_closed",
    "import.fd_devnull",
    "import.fd_dmabuf",
    "import.null",
    "import.signalled_poll",
    "unsig.read.import",
    "unsig.read.poll",
    "unsig.read.export_1",
    "unsig.read.export_2",
    "unsig.read.export_3",
    "unsig.read.sync_file_poll",
    "unsig.read.sync_blocks",
    "unsig.read.poll_after_signal",
    "unsig.read.sync_file_poll_after_signal",
    "unsig.read.info_after_signal",
    "unsig.write.import",
    "unsig.write.poll",
    "unsig.write.export_1",
    "unsig.write.export_2",
    "unsig.write.export_3",
    "unsig.write.sync_file_poll",
    "unsig.write.sync_blocks",
    "unsig.write.poll_after_signal",
    "unsig.write.sync_file_poll_after_signal",
    "unsig.write.info_after_signal",
    "syncfile.unsignalled_info",
    "syncfile.unsignalled_poll",
    "syncfile.fdinfo",
    "syncfile.link",
    "syncfile.lseek",
    "syncfile.read",
    "syncfile.mmap",
    "syncfile.unknown_ioctl",
    "syncfile.dmabuf_ioctl_on_sync_file",
    "merge.same_fd_twice",
    "merge.two_timelines",
    "merge.bad_fd2",
    "merge.fd2_dmabuf",
    "merge.first_is_dmabuf",
    "merge.flags_nonzero",
    "merge.pad_nonzero",
    "merge.name_32_no_nul",
    "merge.empty_name",
    "merge.null",
    "merge.two_signalled",
    "info.count_only",
    "info.count_only_with_pointer",
    "info.exact",
    "info.larger",
    "info.too_small",
    "info.null_array",
    "info.bad_array",
    "info.flags_nonzero",
    "info.pad_nonzero",
    "info.null",
    "info.unsignalled_fields",
    "deadline.ok",
    "deadline.pad_nonzero",
    "deadline.null",
    "deadline.signalled",
    "info.half_signalled",
    "syncfile.half_signalled_poll",
    "info.all_signalled",
    "syncfile.signalled_poll",
    "exporter.udmabuf.sync_rw",
    "exporter.udmabuf.seek_end",
    "exporter.udmabuf.poll",
    "exporter.udmabuf.set_name",
    "exporter.udmabuf.export_sync_file",
    "exporter.vgem.sync_rw",
    "exporter.vgem.seek_end",
    "exporter.vgem.poll",
    "exporter.vgem.set_name",
    "exporter.vgem.export_sync_file",
];

/// Cases of the VFIO boot.
pub const VFIO_CASES: &[&str] = &[
    "vfio.setup",
    "vfio.probe",
    "vfio.null",
    "vfio.argsz_4",
    "vfio.unknown_flag_bit",
    "vfio.get_and_set",
    "vfio.set",
    "vfio.neither",
    "vfio.unknown_feature",
    "vfio.payload_short",
    "vfio.flags_nonzero",
    "vfio.nr_ranges_0",
    "vfio.bar_6",
    "vfio.bar_absent",
    "vfio.zero_length",
    "vfio.unaligned_offset",
    "vfio.unaligned_length",
    "vfio.past_bar_end",
    "vfio.longer_than_bar",
    "vfio.offset_wraps",
    "vfio.length_bit63",
    "vfio.sum_overflows",
    "vfio.export_two_ranges",
    "vfio.export_open_flags",
    "vfio.mmap",
    "vfio.vgem_import",
    "vfio.idle.sync",
    "vfio.idle.export_sync_file",
    "vfio.idle.seek_end",
    "vfio.idle.poll",
    "vfio.idle.set_name",
    "vfio.idle.mmap",
    "vfio.idle.vgem_import",
    "vfio.memory_off",
    "vfio.memory_off.sync",
    "vfio.memory_off.export_sync_file",
    "vfio.memory_off.seek_end",
    "vfio.memory_off.poll",
    "vfio.memory_off.set_name",
    "vfio.memory_off.mmap",
    "vfio.memory_off.vgem_import",
    "vfio.export_while_memory_off",
    "vfio.memory_on",
    "vfio.memory_on.sync",
    "vfio.memory_on.export_sync_file",
    "vfio.memory_on.seek_end",
    "vfio.memory_on.poll",
    "vfio.memory_on.set_name",
    "vfio.memory_on.mmap",
    "vfio.memory_on.vgem_import",
    "vfio.born_revoked.sync",
    "vfio.born_revoked.export_sync_file",
    "vfio.born_revoked.seek_end",
    "vfio.born_revoked.poll",
    "vfio.born_revoked.set_name",
    "vfio.born_revoked.mmap",
    "vfio.born_revoked.vgem_import",
    "vfio.device_reset",
    "vfio.after_reset.sync",
    "vfio.after_reset.export_sync_file",
    "vfio.after_reset.seek_end",
    "vfio.after_reset.poll",
    "vfio.after_reset.set_name",
    "vfio.after_reset.mmap",
    "vfio.after_reset.vgem_import",
    "vfio.export_after_reset",
    "vfio.device_close",
    "vfio.after_close.sync",
    "vfio.after_close.export_sync_file",
    "vfio.after_close.seek_end",
    "vfio.after_close.poll",
    "vfio.after_close.set_name",
    "vfio.after_close.mmap",
    "vfio.after_close.vgem_import",
];

/// Importer kinds of the test module, in the probe's order (enum dti_mode
/// of `kmod/dmabuf_test_importer.h`).
pub const KMOD_MODES: &[&str] = &[
    "static",
    "odp",
    "gpu",
    "pinned",
    "lying",
    "lazy",
    "cache_lazy",
    "cache_revalidate",
];

/// The steps of one importer kind's scenario, in order.
pub const KMOD_STEPS: &[&str] = &[
    "attach",
    "map",
    "reset",
    "map_after_reset",
    "memory_off",
    "map_while_off",
    "memory_on",
    "map_after_on",
    "close",
    "map_after_close",
    "detach",
];

/// Cases of the test importer boot: the control interface's answers to bad
/// input, then [`KMOD_STEPS`] for each of [`KMOD_MODES`].
pub const KMOD_CASES: &[&str] = &[
    "kmod.setup",
    "kmod.bad.unknown_mode",
    "kmod.bad.not_dmabuf",
    "kmod.bad.closed_fd",
    "kmod.bad.no_pci_device",
    "kmod.bad.null_argument",
    "kmod.bad.map_unattached",
    "kmod.bad.unmap_unattached",
    "kmod.bad.detach_unattached",
    "kmod.bad.unknown_ioctl",
    "kmod.bad.mark_256",
    "kmod.bad.attach",
    "kmod.bad.attach_twice",
    "kmod.bad.unmap_unmapped",
    "kmod.bad.map",
    "kmod.bad.map_again",
    "kmod.bad.unmap",
    "kmod.bad.double_unmap",
    "kmod.bad.unpin_unpinned",
    "kmod.bad.pin",
    "kmod.bad.pin_twice",
    "kmod.bad.unpin",
    "kmod.bad.detach",
    "kmod.bad.map_after_detach",
    "kmod.bad.close_mapped",
    "kmod.static.attach",
    "kmod.static.map",
    "kmod.static.reset",
    "kmod.static.map_after_reset",
    "kmod.static.memory_off",
    "kmod.static.map_while_off",
    "kmod.static.memory_on",
    "kmod.static.map_after_on",
    "kmod.static.close",
    "kmod.static.map_after_close",
    "kmod.static.detach",
    "kmod.odp.attach",
    "kmod.odp.map",
    "kmod.odp.reset",
    "kmod.odp.map_after_reset",
    "kmod.odp.memory_off",
    "kmod.odp.map_while_off",
    "kmod.odp.memory_on",
    "kmod.odp.map_after_on",
    "kmod.odp.close",
    "kmod.odp.map_after_close",
    "kmod.odp.detach",
    "kmod.gpu.attach",
    "kmod.gpu.map",
    "kmod.gpu.reset",
    "kmod.gpu.map_after_reset",
    "kmod.gpu.memory_off",
    "kmod.gpu.map_while_off",
    "kmod.gpu.memory_on",
    "kmod.gpu.map_after_on",
    "kmod.gpu.close",
    "kmod.gpu.map_after_close",
    "kmod.gpu.detach",
    "kmod.pinned.attach",
    "kmod.pinned.map",
    "kmod.pinned.reset",
    "kmod.pinned.map_after_reset",
    "kmod.pinned.memory_off",
    "kmod.pinned.map_while_off",
    "kmod.pinned.memory_on",
    "kmod.pinned.map_after_on",
    "kmod.pinned.close",
    "kmod.pinned.map_after_close",
    "kmod.pinned.detach",
    "kmod.lying.attach",
    "kmod.lying.map",
    "kmod.lying.reset",
    "kmod.lying.map_after_reset",
    "kmod.lying.memory_off",
    "kmod.lying.map_while_off",
    "kmod.lying.memory_on",
    "kmod.lying.map_after_on",
    "kmod.lying.close",
    "kmod.lying.map_after_close",
    "kmod.lying.detach",
    "kmod.lazy.attach",
    "kmod.lazy.map",
    "kmod.lazy.reset",
    "kmod.lazy.map_after_reset",
    "kmod.lazy.memory_off",
    "kmod.lazy.map_while_off",
    "kmod.lazy.memory_on",
    "kmod.lazy.map_after_on",
    "kmod.lazy.close",
    "kmod.lazy.map_after_close",
    "kmod.lazy.detach",
    "kmod.cache_lazy.attach",
    "kmod.cache_lazy.map",
    "kmod.cache_lazy.reset",
    "kmod.cache_lazy.map_after_reset",
    "kmod.cache_lazy.memory_off",
    "kmod.cache_lazy.map_while_off",
    "kmod.cache_lazy.memory_on",
    "kmod.cache_lazy.map_after_on",
    "kmod.cache_lazy.close",
    "kmod.cache_lazy.map_after_close",
    "kmod.cache_lazy.detach",
    "kmod.cache_revalidate.attach",
    "kmod.cache_revalidate.map",
    "kmod.cache_revalidate.reset",
    "kmod.cache_revalidate.map_after_reset",
    "kmod.cache_revalidate.memory_off",
    "kmod.cache_revalidate.map_while_off",
    "kmod.cache_revalidate.memory_on",
    "kmod.cache_revalidate.map_after_on",
    "kmod.cache_revalidate.close",
    "kmod.cache_revalidate.map_after_close",
    "kmod.cache_revalidate.detach",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_printable() {
        let mut seen = std::collections::BTreeSet::new();
        for p in Part::ALL {
            for id in p.cases() {
                assert!(seen.insert(*id), "duplicate case {id}");
                assert!(
                    id.bytes().all(|b| b.is_ascii_graphic() && b != b'#'),
                    "{id}"
                );
            }
        }
        assert_eq!(area("merge.bad_fd2"), "merge");
        assert_eq!(area("kmod.odp.reset"), "kmod.odp");
        assert_eq!(area("kmod.setup"), "kmod.setup");
    }

    #[test]
    fn the_kmod_list_is_every_step_of_every_mode() {
        for m in KMOD_MODES {
            for s in KMOD_STEPS {
                let id = format!("kmod.{m}.{s}");
                assert!(KMOD_CASES.contains(&id.as_str()), "{id}");
            }
        }
        let bad = KMOD_CASES
            .iter()
            .filter(|c| c.starts_with("kmod.bad."))
            .count();
        assert_eq!(
            KMOD_CASES.len(),
            1 + bad + KMOD_MODES.len() * KMOD_STEPS.len()
        );
    }
}
