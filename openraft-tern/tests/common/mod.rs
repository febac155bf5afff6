//! A key-value application on openraft, stored in Tern, for the tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft_tern::Application;
use serde::{Deserialize, Serialize};

/// Sets `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub key: String,
    pub value: String,
}

/// The value `key` held before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous(pub Option<String>);

openraft::declare_raft_types!(pub Config: D = Set, R = Previous);

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Kv(pub BTreeMap<String, String>);

impl Application<Config> for Kv {
    fn apply(&mut self, _log_id: &openraft::LogId<u64>, request: &Set) -> Previous {
        Previous(self.0.insert(request.key.clone(), request.value.clone()))
    }
}
