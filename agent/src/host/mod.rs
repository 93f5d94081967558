//! The host the agent runs on, as the pipeline needs it: the resources of its processes.

pub mod resources;
