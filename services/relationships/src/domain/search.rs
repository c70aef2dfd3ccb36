//! Customer search and paging. A customer matches a query when its name or
//! its primary domain starts with it (case-insensitive). Results are ordered
//! by their *match key*: the name when the name matches, otherwise the
//! domain. Each key has its own index, so a page is two index range scans
//! that are merged here, and the page token is the last (key, id) returned —
//! no OFFSET, whatever the depth.

/// The stored, collation-proof form of a name or domain: its per-character
/// lowercase, hex-encoded. Hex digits sort the same in every collation, and
/// a prefix of the text is a prefix of the key.
pub fn key(text: &str) -> String {
    let lower: String = text.trim().chars().flat_map(char::to_lowercase).collect();
    sovra_runtime::hex::encode(lower.as_bytes())
}

/// The key range `[lo, hi)` of everything starting with `query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub lo: String,
    pub hi: String,
}

impl KeyRange {
    /// Every key, for an empty query.
    pub fn all() -> Self {
        Self {
            lo: String::new(),
            hi: "g".to_owned(),
        }
    }

    pub fn prefix(query: &str) -> Self {
        let lo = key(query);
        // 'g' sorts after every hex digit, so lo + "g" bounds every extension.
        let hi = format!("{lo}g");
        Self { lo, hi }
    }

    pub fn contains(&self, k: &str) -> bool {
        k >= self.lo.as_str() && k < self.hi.as_str()
    }
}

/// A position in the merged order.
pub type Position = (String, String);

/// One candidate row: its match key, its customer id, and the item.
#[derive(Debug, Clone)]
pub struct Hit<T> {
    pub key: String,
    pub id: String,
    pub item: T,
}

impl<T> Hit<T> {
    fn position(&self) -> Position {
        (self.key.clone(), self.id.clone())
    }
}

/// One page and where the next starts (None: this was the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Position>,
}

/// The position up to which a branch fetched with `limit + 1` is complete:
/// its last row when it filled up, else unbounded.
pub fn branch_bound<T>(rows: &[Hit<T>], limit: usize) -> Option<Position> {
    (rows.len() > limit).then(|| rows[rows.len() - 1].position())
}

/// Merges the name branch and the domain branch (each fetched after the same
/// cursor, in (key, id) order, with `limit + 1` rows, the domain branch only
/// up to the name branch's bound) into one page of at most `limit`.
pub fn merge_page<T>(names: Vec<Hit<T>>, domains: Vec<Hit<T>>, limit: usize) -> Page<T> {
    let bound = match (branch_bound(&names, limit), branch_bound(&domains, limit)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut merged: Vec<Hit<T>> = names
        .into_iter()
        .chain(domains)
        .filter(|h| bound.as_ref().is_none_or(|b| h.position() <= *b))
        .collect();
    merged.sort_by(|x, y| (&x.key, &x.id).cmp(&(&y.key, &y.id)));
    if merged.len() > limit {
        merged.truncate(limit);
        let next = merged.last().map(Hit::position);
        return Page {
            items: merged.into_iter().map(|h| h.item).collect(),
            next,
        };
    }
    // Everything up to the bound is on this page; the next page starts after it.
    Page {
        items: merged.into_iter().map(|h| h.item).collect(),
        next: bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Customer {
        id: String,
        name: String,
        domain: String,
    }

    /// What the two SQL branches return, simulated over a vector.
    fn branch(
        all: &[Customer],
        q: &KeyRange,
        after: &Option<Position>,
        upto: &Option<Position>,
        by_domain: bool,
        limit: usize,
    ) -> Vec<Hit<String>> {
        let mut hits: Vec<Hit<String>> = all
            .iter()
            .filter_map(|c| {
                let (nk, dk) = (key(&c.name), key(&c.domain));
                let k = if by_domain {
                    (q.contains(&dk) && !q.contains(&nk)).then_some(dk)?
                } else {
                    q.contains(&nk).then_some(nk)?
                };
                let p = (k.clone(), c.id.clone());
                if after.as_ref().is_some_and(|a| p <= *a) || upto.as_ref().is_some_and(|u| p > *u)
                {
                    return None;
                }
                Some(Hit {
                    key: k,
                    id: c.id.clone(),
                    item: c.id.clone(),
                })
            })
            .collect();
        hits.sort_by(|x, y| (&x.key, &x.id).cmp(&(&y.key, &y.id)));
        hits.truncate(limit + 1);
        hits
    }

    fn walk(all: &[Customer], query: &str, limit: usize) -> Vec<String> {
        let q = if query.is_empty() {
            KeyRange::all()
        } else {
            KeyRange::prefix(query)
        };
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..10_000 {
            let names = branch(all, &q, &after, &None, false, limit);
            let upto = branch_bound(&names, limit);
            let domains = if query.is_empty() {
                Vec::new()
            } else {
                branch(all, &q, &after, &upto, true, limit)
            };
            let page = merge_page(names, domains, limit);
            assert!(page.items.len() <= limit);
            seen.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return seen,
            }
        }
        panic!("paging did not end");
    }

    fn customers() -> Vec<Customer> {
        // Names and domains that overlap, tie and interleave on purpose.
        let words = ["contoso", "Con", "fabrikam", "CONTOSO", "northwind", "co"];
        let mut v = Vec::new();
        for i in 0..150usize {
            let w = words[i % words.len()];
            let d = words[(i * 7 + 3) % words.len()].to_lowercase();
            v.push(Customer {
                id: format!("global_{i:032x}"),
                name: if i % 5 == 0 {
                    w.to_owned()
                } else {
                    format!("{w} {}", i % 13)
                },
                domain: format!("{d}{}.example", i % 17),
            });
        }
        v
    }

    #[test]
    fn every_match_appears_exactly_once_on_some_page() {
        let all = customers();
        for query in [
            "", "co", "con", "CONTOSO", "fab", "north", "zzz", "contoso1",
        ] {
            let q = KeyRange::prefix(query);
            let mut expected: Vec<String> = all
                .iter()
                .filter(|c| {
                    query.is_empty() || q.contains(&key(&c.name)) || q.contains(&key(&c.domain))
                })
                .map(|c| c.id.clone())
                .collect();
            expected.sort();
            for limit in [1, 2, 7, 50, 1000] {
                let mut got = walk(&all, query, limit);
                let n = got.len();
                got.sort();
                got.dedup();
                assert_eq!(
                    n,
                    got.len(),
                    "duplicates for {query:?} at page size {limit}"
                );
                assert_eq!(got, expected, "query {query:?}, page size {limit}");
            }
        }
    }

    #[test]
    fn keys_are_case_insensitive_prefixes() {
        assert_eq!(key("AB"), key("ab"));
        let r = KeyRange::prefix("Con");
        assert!(r.contains(&key("contoso")));
        assert!(r.contains(&key("CON")));
        assert!(!r.contains(&key("co")));
        assert!(!r.contains(&key("fabrikam")));
        assert!(KeyRange::all().contains(&key("ünïcode")));
    }
}
