-- Versioned migrations of user handler modules (`workers.migrations("module", folder)`): one row per module and
-- version applied, so each runs once, in order, whichever worker starts first.
CREATE TABLE hypercard_module_migrations (
    module text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (module, version)
);
