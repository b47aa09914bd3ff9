//! `hotpair bench`: measurements that report ratios against a baseline taken in the same run.

use std::path::PathBuf;

use crate::Error;

pub fn journal(_dir: Option<PathBuf>, _seconds: f64, _json: bool) -> Result<(), Error> {
    Err(Error::Failed("bench journal is being written".into()))
}
