-- A SQLite ledger written by dpflows before issue 15 (schema version 3, populations; main at 4b857b5):
-- two planners (bob in group 'team'), client caps, the default population's global cap, an allocation
-- and a horizon cap, a charge each in windows 0 and 1.
BEGIN TRANSACTION;
CREATE TABLE answer_shapes (
    answer_id TEXT PRIMARY KEY REFERENCES answers(answer_id), dataset TEXT NOT NULL, kind TEXT NOT NULL,
    data_version TEXT NOT NULL, mechanism TEXT NOT NULL, start_day TEXT NOT NULL, end_day TEXT NOT NULL,
    zoning TEXT NOT NULL, hours_mask INTEGER NOT NULL, weekdays_mask INTEGER NOT NULL, measure TEXT NOT NULL,
    zone_id TEXT NOT NULL, unit TEXT NOT NULL, loss_nanos INTEGER NOT NULL, noise_scale REAL NOT NULL,
    created_at TEXT NOT NULL, share_group TEXT NOT NULL DEFAULT '');
CREATE TABLE answers (
    answer_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, query_key TEXT NOT NULL,
    client_id INTEGER NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (dataset, query_key));
INSERT INTO "answers" VALUES('a1','city','k1',1,'{"values":[1]}','2026-12-07T03:03:42.151100+00:00');
INSERT INTO "answers" VALUES('a2','city','k2',2,'{"values":[1]}','2026-12-07T03:03:42.158426+00:00');
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id INTEGER NOT NULL REFERENCES clients(id),
    key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, client_id INTEGER, action TEXT NOT NULL,
    dataset TEXT, query TEXT, epsilon_nanos INTEGER NOT NULL, outcome TEXT NOT NULL, answer_id TEXT,
    prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL);
INSERT INTO "audit" VALUES(1,'2026-12-07T03:03:42.151345+00:00',1,'query.flows','city',NULL,250000000,'released','a1','0000000000000000000000000000000000000000000000000000000000000000','daa2a353dd79a28bf484567d98f5faaf53f031061c6a745e3db1171db8578144');
INSERT INTO "audit" VALUES(2,'2026-12-07T03:03:42.158534+00:00',2,'query.flows','city',NULL,250000000,'released','a2','daa2a353dd79a28bf484567d98f5faaf53f031061c6a745e3db1171db8578144','286ff8eafa2ee8c68adc993d8036b5d021992b2a2e59fd97f41f0163395f011b');
CREATE TABLE caps (
    client_id INTEGER NOT NULL, dataset TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (client_id, dataset, win));
INSERT INTO "caps" VALUES(1,'city',-1,1000000000,'2026-12-07T03:03:42.131318+00:00');
INSERT INTO "caps" VALUES(2,'city',-1,1000000000,'2026-12-07T03:03:42.138124+00:00');
CREATE TABLE charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_id INTEGER NOT NULL, dataset TEXT NOT NULL,
    win INTEGER NOT NULL, nanos INTEGER NOT NULL CHECK (nanos >= 0), answer_id TEXT NOT NULL,
    at TEXT NOT NULL);
INSERT INTO "charges" VALUES(1,1,'city',0,250000000,'a1','2026-12-07T03:03:42.151100+00:00');
INSERT INTO "charges" VALUES(2,1,'city',1,250000000,'a1','2026-12-07T03:03:42.151100+00:00');
INSERT INTO "charges" VALUES(3,2,'city',0,250000000,'a2','2026-12-07T03:03:42.158426+00:00');
INSERT INTO "charges" VALUES(4,2,'city',1,250000000,'a2','2026-12-07T03:03:42.158426+00:00');
CREATE TABLE client_groups (
    client_id INTEGER PRIMARY KEY REFERENCES clients(id), group_name TEXT NOT NULL, updated_at TEXT NOT NULL);
INSERT INTO "client_groups" VALUES(2,'team','2026-12-07T03:03:42.130104+00:00');
CREATE TABLE clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    created_at TEXT NOT NULL);
INSERT INTO "clients" VALUES(1,'alice','planner','2026-12-07T03:03:42.121630+00:00');
INSERT INTO "clients" VALUES(2,'bob','planner','2026-12-07T03:03:42.125964+00:00');
CREATE TABLE datasets (
    dataset TEXT PRIMARY KEY, first_day TEXT NOT NULL, window_days INTEGER NOT NULL,
    measure TEXT NOT NULL, registered_at TEXT NOT NULL, population TEXT NOT NULL DEFAULT 'default', window_offset INTEGER NOT NULL DEFAULT 0);
INSERT INTO "datasets" VALUES('city','2024-03-04',7,'epsilon','2026-12-07T03:03:42.131247+00:00','default',0);
CREATE TABLE group_caps (
    group_name TEXT NOT NULL, dataset TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (group_name, dataset, win));
CREATE TABLE group_spend (
    dataset TEXT NOT NULL, win INTEGER NOT NULL, group_name TEXT NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, group_name));
CREATE TABLE population_caps (
    population TEXT NOT NULL, win INTEGER NOT NULL, cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0),
    updated_at TEXT NOT NULL, PRIMARY KEY (population, win));
INSERT INTO "population_caps" VALUES('default',-1,3000000000,'2026-12-07T03:03:42.139022+00:00');
CREATE TABLE population_group_caps (
    group_name TEXT NOT NULL, population TEXT NOT NULL, win INTEGER NOT NULL,
    cap_nanos INTEGER NOT NULL CHECK (cap_nanos >= 0), updated_at TEXT NOT NULL,
    PRIMARY KEY (group_name, population, win));
INSERT INTO "population_group_caps" VALUES('team','default',-1,1000000000,'2026-12-07T03:03:42.141994+00:00');
CREATE TABLE population_spend (
    population TEXT NOT NULL, win INTEGER NOT NULL, holder TEXT NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (population, win, holder));
INSERT INTO "population_spend" VALUES('default',0,'',250000000);
INSERT INTO "population_spend" VALUES('default',0,'*',500000000);
INSERT INTO "population_spend" VALUES('default',1,'',250000000);
INSERT INTO "population_spend" VALUES('default',1,'*',500000000);
INSERT INTO "population_spend" VALUES('default',0,'team',250000000);
INSERT INTO "population_spend" VALUES('default',1,'team',250000000);
CREATE TABLE populations (
    population TEXT PRIMARY KEY, first_day TEXT, window_days INTEGER, measure TEXT, horizon_windows INTEGER,
    horizon_cap_nanos INTEGER CHECK (horizon_cap_nanos >= 0), registered_at TEXT NOT NULL);
INSERT INTO "populations" VALUES('default','2024-03-04',7,'epsilon',52,100000000000,'2026-12-07T03:03:42.131065+00:00');
CREATE TABLE spend (
    dataset TEXT NOT NULL, win INTEGER NOT NULL, client_id INTEGER NOT NULL,
    nanos INTEGER NOT NULL CHECK (nanos >= 0), PRIMARY KEY (dataset, win, client_id));
INSERT INTO "spend" VALUES('city',0,1,250000000);
INSERT INTO "spend" VALUES('city',0,0,500000000);
INSERT INTO "spend" VALUES('city',1,1,250000000);
INSERT INTO "spend" VALUES('city',1,0,500000000);
INSERT INTO "spend" VALUES('city',0,2,250000000);
INSERT INTO "spend" VALUES('city',1,2,250000000);
CREATE INDEX charges_by_window ON charges (dataset, win, client_id);
CREATE INDEX answer_shapes_by_query
    ON answer_shapes (dataset, kind, data_version, start_day, end_day, zoning, noise_scale);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER charges_no_update BEFORE UPDATE ON charges
    BEGIN SELECT RAISE(ABORT, 'charges are append-only'); END;
CREATE TRIGGER charges_no_delete BEFORE DELETE ON charges
    BEGIN SELECT RAISE(ABORT, 'charges are append-only'); END;
CREATE INDEX answer_shapes_by_group
    ON answer_shapes (dataset, share_group, kind, data_version, start_day, end_day, zoning, noise_scale);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('clients',2);
INSERT INTO "sqlite_sequence" VALUES('charges',4);
INSERT INTO "sqlite_sequence" VALUES('audit',2);
COMMIT;
PRAGMA user_version = 3;
