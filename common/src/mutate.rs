//! Property-test inputs that are nearly valid: a valid file with a few random edits (bytes
//! overwritten, inserted, deleted, duplicated, or the tail cut off), the way a disk, a
//! transfer or a hand edit damages one. Arbitrary bytes alone rarely get past a parser's
//! first check; these reach its every branch.

use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Edit {
    Overwrite(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Overwrite(at, byte)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete(at, len)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Duplicate(at, len)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |i: usize, extra: usize| i % (bytes.len() + extra).max(1);
        match edit {
            Edit::Overwrite(i, byte) if !bytes.is_empty() => {
                let i = at(*i, 0);
                bytes[i] = *byte;
            }
            Edit::Insert(i, new) => {
                let i = at(*i, 1);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Delete(i, len) if !bytes.is_empty() => {
                let i = at(*i, 0);
                bytes.drain(i..(i + len).min(bytes.len()));
            }
            Edit::Duplicate(i, len) if !bytes.is_empty() => {
                let i = at(*i, 0);
                let copy = bytes[i..(i + len).min(bytes.len())].to_vec();
                bytes.splice(i..i, copy);
            }
            Edit::Truncate(i) => {
                let i = at(*i, 1);
                bytes.truncate(i);
            }
            _ => {}
        }
    }
    bytes
}

/// `valid` with one to eight random edits, or (one case in eight) arbitrary bytes.
pub fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        7 => prop::collection::vec(edit(), 1..8).prop_map(move |edits| apply(valid.clone(), &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}
