//! Name reservations shared by pods and containers: kubelet relies on a second create with the
//! same name and attempt failing, so a name is taken before anything is built and given back
//! if the create fails or panics.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, carrying on past poisoning: a panic elsewhere must not wedge every later
/// call, and the data under these locks is replaced whole, never left half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An index that maps reserved names to the id holding them.
pub(crate) trait ReservedNames {
    /// Reservation name → id.
    fn names(&mut self) -> &mut HashMap<String, String>;
}

/// Holds a reserved name until kept; dropped unkept (failure, panic) it frees the name.
pub(crate) struct NameReservation<'a, I: ReservedNames> {
    index: &'a Mutex<I>,
    name: String,
    id: String,
    kept: bool,
}

impl<'a, I: ReservedNames> NameReservation<'a, I> {
    /// Records `name` → `id` in `index` (whose lock the caller holds as `guard`) and returns
    /// the reservation that gives it back unless kept.
    pub(crate) fn take(index: &'a Mutex<I>, guard: &mut I, name: &str, id: &str) -> Self {
        guard.names().insert(name.to_owned(), id.to_owned());
        NameReservation {
            index,
            name: name.to_owned(),
            id: id.to_owned(),
            kept: false,
        }
    }

    /// The create succeeded: the name stays taken.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl<I: ReservedNames> Drop for NameReservation<'_, I> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut index = lock(self.index);
        let names = index.names();
        if names.get(&self.name) == Some(&self.id) {
            names.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Names(HashMap<String, String>);

    impl ReservedNames for Names {
        fn names(&mut self) -> &mut HashMap<String, String> {
            &mut self.0
        }
    }

    #[test]
    fn unkept_reservation_frees_only_its_own_name() {
        let index = Mutex::new(Names::default());
        {
            let mut g = lock(&index);
            let r = NameReservation::take(&index, &mut g, "n", "a");
            drop(g);
            drop(r);
        }
        assert!(lock(&index).0.is_empty());
        let mut g = lock(&index);
        let kept = NameReservation::take(&index, &mut g, "n", "a");
        drop(g);
        kept.keep();
        assert_eq!(lock(&index).0.get("n").map(String::as_str), Some("a"));
        // A stale reservation for another id must not free the current holder's name.
        let stale = NameReservation {
            index: &index,
            name: "n".into(),
            id: "b".into(),
            kept: false,
        };
        drop(stale);
        assert_eq!(lock(&index).0.get("n").map(String::as_str), Some("a"));
    }
}
