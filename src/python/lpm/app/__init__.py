"""Process plumbing shared by LPM's binaries: flags with environment fallbacks, logging."""
