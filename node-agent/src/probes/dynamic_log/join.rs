//! Pairs each call's entry with its return.
//!
//! Key: (tgid, goroutine id) for Go, (tgid, thread id) otherwise, plus the frame depth the kernel
//! computed — equal at the entry and at the RET of one call, larger for deeper frames, and for Go
//! measured from the top of the goroutine stack so it survives the runtime moving the stack. Each
//! key keeps a stack of open calls, which makes recursion exact and lets frames that were unwound
//! without returning (panics, longjmp) be recognised and evicted when a shallower frame returns.
use std::collections::HashMap;

/// An open call.
#[derive(Clone, Debug, PartialEq)]
pub struct Open<T> {
    pub depth: u64,
    pub ktime_ns: u64,
    pub data: T,
}

#[derive(Debug)]
pub struct Joiner<T> {
    open: HashMap<(u32, u64), Vec<Open<T>>>,
    len: usize,
    max_open: usize,
    /// Calls whose return never came.
    pub evicted: u64,
    /// Returns without a known entry (attached mid-call).
    pub unmatched: u64,
}

impl<T> Joiner<T> {
    pub fn new(max_open: usize) -> Joiner<T> {
        Joiner {
            open: HashMap::new(),
            len: 0,
            max_open,
            evicted: 0,
            unmatched: 0,
        }
    }

    /// Open calls.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn enter(&mut self, tgid: u32, goid: u64, call: Open<T>) {
        let stack = self.open.entry((tgid, goid)).or_default();
        // Frames at this depth or deeper cannot still be running. The same depth twice is Go
        // re-running a prologue after morestack (only where the entry probe could not be put after
        // the stack check, see `prologue`): the same call, not a lost one.
        while let Some(top) = stack.last() {
            if top.depth < call.depth {
                break;
            }
            if top.depth > call.depth {
                self.evicted += 1;
            }
            stack.pop();
            self.len -= 1;
        }
        if self.len >= self.max_open {
            // Full: this call is not followed (counted as evicted).
            self.evicted += 1;
            if stack.is_empty() {
                self.open.remove(&(tgid, goid));
            }
            return;
        }
        stack.push(call);
        self.len += 1;
    }

    /// The entry of the call returning at `depth`, if it was seen.
    pub fn leave(&mut self, tgid: u32, goid: u64, depth: u64) -> Option<Open<T>> {
        let key = (tgid, goid);
        let Some(stack) = self.open.get_mut(&key) else {
            self.unmatched += 1;
            return None;
        };
        while stack.last().is_some_and(|top| top.depth > depth) {
            stack.pop();
            self.len -= 1;
            self.evicted += 1;
        }
        let found = if stack.last().is_some_and(|top| top.depth == depth) {
            self.len -= 1;
            stack.pop()
        } else {
            self.unmatched += 1;
            None
        };
        if stack.is_empty() {
            self.open.remove(&key);
        }
        found
    }

    /// Evicts calls that entered before `cutoff_ns` (their return is taken as lost).
    pub fn evict_before(&mut self, cutoff_ns: u64) {
        let mut evicted = 0;
        self.open.retain(|_, stack| {
            let before = stack.len();
            stack.retain(|c| c.ktime_ns >= cutoff_ns);
            evicted += before - stack.len();
            !stack.is_empty()
        });
        self.len -= evicted;
        self.evicted += evicted as u64;
    }

    /// Forgets every open call of a process that is gone.
    pub fn forget_process(&mut self, tgid: u32) {
        let mut gone = 0;
        self.open.retain(|(t, _), stack| {
            if *t == tgid {
                gone += stack.len();
                false
            } else {
                true
            }
        });
        self.len -= gone;
        self.evicted += gone as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(depth: u64, data: u32) -> Open<u32> {
        Open {
            depth,
            ktime_ns: u64::from(data),
            data,
        }
    }

    #[test]
    fn recursive_calls_pair_with_their_own_returns() {
        let mut j = Joiner::new(100);
        j.enter(1, 7, open(100, 1));
        j.enter(1, 7, open(200, 2));
        j.enter(1, 7, open(300, 3));
        assert_eq!(j.leave(1, 7, 300).unwrap().data, 3);
        assert_eq!(j.leave(1, 7, 200).unwrap().data, 2);
        assert_eq!(j.leave(1, 7, 100).unwrap().data, 1);
        assert!(j.is_empty());
        assert_eq!(j.evicted, 0);
    }

    #[test]
    fn frames_unwound_by_a_panic_are_evicted_when_a_shallower_call_returns() {
        let mut j = Joiner::new(100);
        j.enter(1, 7, open(100, 1));
        j.enter(1, 7, open(200, 2));
        assert_eq!(j.leave(1, 7, 100).unwrap().data, 1);
        assert_eq!(j.evicted, 1);
        assert!(j.is_empty());
    }

    #[test]
    fn a_prologue_rerun_after_stack_growth_is_the_same_call() {
        let mut j = Joiner::new(100);
        j.enter(1, 7, open(100, 1));
        j.enter(1, 7, open(100, 2));
        assert_eq!(j.leave(1, 7, 100).unwrap().data, 2);
        assert_eq!(j.evicted, 0);
    }

    #[test]
    fn goroutines_do_not_see_each_others_calls() {
        let mut j = Joiner::new(100);
        j.enter(1, 7, open(100, 1));
        j.enter(1, 8, open(100, 2));
        assert_eq!(j.leave(1, 8, 100).unwrap().data, 2);
        assert_eq!(j.leave(1, 7, 100).unwrap().data, 1);
    }

    #[test]
    fn old_calls_are_evicted_and_counted() {
        let mut j = Joiner::new(100);
        j.enter(1, 7, open(100, 1));
        j.enter(1, 9, open(100, 50));
        j.evict_before(10);
        assert_eq!(j.len(), 1);
        assert_eq!(j.evicted, 1);
        assert!(j.leave(1, 7, 100).is_none());
        assert_eq!(j.unmatched, 1);
    }
}
