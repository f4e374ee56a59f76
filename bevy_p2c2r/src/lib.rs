//! Bevy plugin for P2C2R (filled in by the plugin issue).
