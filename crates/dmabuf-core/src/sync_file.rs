//! TEMPORARY minimal sync_file for the ABI branch; replaced at merge.
use crate::dma_fence::Fence;

/// Per-leaf info.
#[derive(Clone, Debug)]
pub struct FenceInfo {
    /// Timeline.
    pub obj_name: String,
    /// Driver.
    pub driver_name: String,
    /// Status.
    pub status: i32,
    /// Flags.
    pub flags: u32,
    /// Timestamp.
    pub timestamp_ns: u64,
}

/// A sync_file.
pub struct SyncFile {
    fence: Fence,
    name: Option<String>,
}

impl SyncFile {
    /// Create.
    pub fn create(fence: Fence) -> Self {
        Self { fence, name: None }
    }
    /// Fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
    /// Merge.
    pub fn merge(name: &str, a: &SyncFile, _b: &SyncFile) -> Result<SyncFile, crate::FenceError> {
        Ok(SyncFile {
            fence: a.fence.clone(),
            name: Some(name.to_owned()),
        })
    }
    /// Name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}{}-{}",
                self.fence.driver_name(),
                self.fence.timeline_name(),
                self.fence.context(),
                self.fence.seqno()
            )
        })
    }
    /// Leaves.
    pub fn fence_infos(&self) -> Vec<FenceInfo> {
        let f = &self.fence;
        vec![FenceInfo {
            obj_name: f.timeline_name().into(),
            driver_name: f.driver_name().into(),
            status: f.get_status(),
            flags: 0,
            timestamp_ns: f.timestamp().unwrap_or(0),
        }]
    }
    /// Leaves as fences.
    pub fn leaves(&self) -> Vec<Fence> {
        vec![self.fence.clone()]
    }
}
