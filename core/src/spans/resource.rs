//! The seam to the host for a span's resource: who sent or received, as OpenTelemetry
//! resources say it. The agent reads a live process's from /proc (`host::resources`); a
//! capture file has no processes, only itself.

use std::path::Path;

use super::{
    Attributes, Resource,
    names::{MQTRACE_CAPTURE_FILE, SERVICE_NAME},
};

/// Where the pipeline learns the resource of the process an event belongs to.
pub trait ProcessResources: Send {
    /// The resource of process `pid` (0: no process, as in a capture file).
    fn of(&mut self, pid: u32) -> &Resource;
    /// Forgets a process that exited.
    fn forget(&mut self, pid: u32);
}

/// For events read from a capture file: one resource, naming the file, for every event.
pub struct CaptureResources(Resource);

impl CaptureResources {
    pub fn new(file: &Path) -> Self {
        let mut capture = Attributes::new();
        capture.insert(SERVICE_NAME.into(), "mqtrace-replay".into());
        capture.insert(
            MQTRACE_CAPTURE_FILE.into(),
            file.display().to_string().into(),
        );
        Self(Resource::new(capture))
    }
}

impl ProcessResources for CaptureResources {
    fn of(&mut self, _pid: u32) -> &Resource {
        &self.0
    }

    fn forget(&mut self, _pid: u32) {}
}
