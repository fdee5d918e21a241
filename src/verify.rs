//! Offline integrity check and description of a closed data directory (`tally verify`,
//! `tally inspect`). Reads only; never writes.
