// Package mask finds sensitive values and replaces them: the value-level
// core of result masking. It does no I/O; the PostgreSQL proxy resolves
// where each result column comes from and calls it on the values that need
// it.
//
// # Rules
//
// The masking: section of the policy decodes into Policy:
//
//	masking:
//	  key_file: /etc/airlock/mask.key   # ≥ 32 bytes, root-only; needed by hash and fake
//	  rules:
//	    - name: emails                  # required, unique; labels the counters
//	      columns: [public.users.email, "crm.*.email*"]
//	      detectors: [email]
//	      strategy: hash                # redact | partial | hash | null | fake
//	    - name: cards
//	      columns: ["*.payments.card_number"]
//	      detectors: [card]
//	      strategy: partial
//	      keep: 4                       # partial only; default 4
//	    - name: credentials
//	      detectors: [tokens, secret]
//	      scan: [public.tickets.body]   # free-text columns the detectors also read
//	      strategy: redact
//	      marker: "[{kind}]"            # default [redacted]; {kind} is the detector's name
//	    - name: phones-for-agents
//	      columns: [public.users.phone]
//	      strategy: fake
//	      connections: [prod]           # scope: empty lists mean everyone
//	      groups: [agents]
//	      except_groups: [dba]
//	      processes: [agent]
//
// columns are source columns masked whole: a pattern is column,
// table.column or schema.table.column, matched against the column a result
// field comes from (RowDescription's table OID and attribute number looked
// up in the catalog), so an alias, t.* or a subquery cannot dodge it; nor
// can a view, once the caller resolves the view's column to its table (or
// the policy names the view). Each part is a glob where * matches any run;
// matching ignores ASCII case.
//
// detectors name value detectors (email, phone, card, us_ssn, iban, ipv4,
// ipv6, jwt, pem_private_key, aws_access_key_id, aws_secret_access_key,
// github_token, gitlab_token, slack_token, secret; and the groups ip,
// aws_keys, tokens, all). They run on every column that has no source
// (expressions, casts, concat, row_to_json, json_agg, string_agg...), on
// the columns listed in scan, and on free text given to Masker.Text
// (NOTICE/ERROR fields, NOTIFY payloads, audit samples). Only what a
// detector finds is replaced, the rest of the value stays. A column with a
// source that no rule names is not looked at: that is the fast path.
//
// A rule with both columns and detectors masks its columns whole and the
// same kind of value wherever it shows up in computed columns. The first
// rule (in policy order) naming a column decides it; for a detector, the
// first rule in force listing it decides the strategy of its finds.
//
// Scope (connections, groups, except_groups, processes) is decided by the
// caller per session: RuleSet.ForSubject uses Rule.Applies, RuleSet.Masker
// takes any predicate.
//
// # Strategies
//
// redact writes the marker. partial keeps the last keep letters and digits
// (never more than half) and stars the rest. hash writes
// [kind:16 letters], the 64 bits of SipHash-2-4 (a keyed PRF built for
// short inputs) under a 128-bit key derived from the masking key by
// HMAC-SHA256: equal values stay equal, across column rules and detectors
// and across restarts with the same key, so joins and GROUP BY still work;
// without the key the letters say nothing about the value. (Before this
// release the hash was HMAC-SHA256: values hashed by an older airlockd do
// not equal the same values hashed now.) null sends SQL NULL for a value masked
// whole (a span inside a value gets the marker). fake writes a made-up value
// of the same format, deterministic under the key: an email at example.com, a Luhn-valid card starting with 9, an SSN in the
// never-issued 9xx area, a phone with the same layout (555-01xx in North
// America), an IBAN of the same country with valid check digits, addresses
// in the documentation ranges, and for anything else the same shape
// (letters stay letters, digits digits). Credentials get the marker.
//
// Masking is idempotent for redact, hash and null (when a replacement
// leaves a fragment that now reads as a value, the output is masked again
// until nothing is found) and for the fakes the detectors ignore by design
// (reserved email domains, card IIN 9, SSN area 9xx, documentation IP
// ranges): masking the output again changes nothing. Fake phones and IBANs
// are phones and IBANs again, and partial may leave a detectable tail (the
// last digits of an address).
//
// # Hot path
//
//	m := ruleSet.ForSubject(subject)    // per session
//	col := m.Column(source)             // per RowDescription field; keep it
//	if !col.Masks() { forward the field untouched }
//	out, r := col.Mask(buf[:0], value)  // per value: Unchanged, Masked or Nulled
//
// Column and Mask do not allocate; a value in which nothing is found costs
// one pass: a word-at-a-time check rejects values with none of the bytes a
// detector needs, other values get a single scan that dispatches on digit
// runs and word starts. A Masker's scratch space makes Mask and Text
// single-goroutine; Counts (masked values per rule and detector, "column"
// for whole values) can be read at any time and holds what was masked up
// to the last Publish: values are counted with a plain add, published with
// one atomic add per counter; the PostgreSQL pipe publishes before every
// write to the client and at the session's end, so whatever the client
// has seen is counted.
//
// # Cost
//
// A value masked whole costs, per value on this project's 2-core VM
// (BenchmarkWhole, CPU ns per value, best of 7 alternated runs of the
// builds before and after, 2026-11-30 21:12 UTC, load average 8): a 23-byte
// email hashed 106 → 52 (the email check in one pass, its domain
// remembered from the previous value, SipHash's tail read in one load, the
// output written in place, the strategy compared as a small code, the
// counter a plain add); a 16-digit card partial 46 → 20 (a value whose
// every byte counts is recognized eight bytes at a time and starred
// without a second pass); fake 524 → 424; redact 25 → 22; null 12 → 7. An
// email column whose values each have a domain of their own loses the
// memo (one failed comparison and a copy of the domain more per value).
// The bench's masked statement (20 rows, email hashed and card partial:
// 40 values) through the pipe as the daemon wires it
// (pgwire's BenchmarkMaskedRowsTx, CPU per transaction, best and median
// of 9 alternated runs): no sample 6.1 → 4.3 µs (median 10.0 → 7.9),
// with the result sample 7.1 → 5.4 µs (11.6 → 9.3), against 1.3 µs for
// the same rows unmasked; masking's own share 4.7 → 2.9 µs. What is left
// is spread: the row walk and its rebuild (the hash is a byte longer than
// the email, so the row is rewritten, not patched in place), SipHash
// (about 20 ns for 23 bytes), the email's local-part scan, the pipe's
// handling of a replaced row.
//
// # Binary format
//
// Column.MaskBinary handles the types whose binary form is their text
// (text, varchar, bpchar, name, unknown, json) and jsonb (a version byte,
// then text). For any other type of a column that Masks, the caller must
// not forward binary values: request text format for that column in Bind,
// or send NULL. Use Column.JSON for json and jsonb columns in text format,
// so replacements outside JSON strings are quoted and the document stays
// valid.
//
// # Compliance copy
//
//	masking:
//	  compliance:
//	    recipient: age1…                # or recipient_file: a root-owned file of age public keys
//	    max_bytes: 65536                # originals kept per statement
//
// With it, the PostgreSQL stage hands every value it replaces in a result
// row to package compliance, which encrypts each statement's originals to
// the recipients (age) for the audit record; Column.RuleName says which rule
// replaced a value. This package only carries the settings.
//
// # Limits
//
// Detectors read text as it is: a value the query transformed on purpose
// (reverse, translate, encode(..., 'base64'), digits spelled out, an email
// with its '@' replaced) is not found. The guarantee for configured columns
// comes from source resolution, not from detectors. Also: nine-digit SSNs
// without dashes, national phone formats outside North America without a
// leading +, lower-case IBANs, hex-only or single-case secrets and base64
// blobs over 256 characters are not detected, to keep false positives on
// plain numbers, digests and ids down.
package mask
