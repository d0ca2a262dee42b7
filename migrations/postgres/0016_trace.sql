-- A trace (`trueup trace`) finds an invariant's violations by key, and their actions by
-- fingerprint.
CREATE INDEX violations_key ON violations (invariant, key);
CREATE INDEX plan_actions_fingerprint ON plan_actions (fingerprint);
