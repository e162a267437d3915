package sqlclass

import "strings"

// sideEffects are functions that do something beyond computing a value, so a
// SELECT calling them is not a read. Matched on the last part of the name,
// whatever the schema: a look-alike in another schema is flagged too (a false
// alarm), and extension functions (dblink, adminpack) live in whatever schema
// the extension was installed into.
var sideEffects = map[string]string{
	// Other sessions and the server.
	"pg_terminate_backend":                   "ends another session",
	"pg_cancel_backend":                      "cancels another session's query",
	"pg_reload_conf":                         "reloads the server configuration",
	"pg_rotate_logfile":                      "rotates the server log",
	"pg_promote":                             "promotes a standby",
	"pg_switch_wal":                          "forces a WAL switch",
	"pg_create_restore_point":                "writes a WAL restore point",
	"pg_backup_start":                        "starts a base backup",
	"pg_backup_stop":                         "stops a base backup",
	"pg_wal_replay_pause":                    "pauses recovery",
	"pg_wal_replay_resume":                   "resumes recovery",
	"pg_log_backend_memory_contexts":         "writes to the server log",
	"pg_stat_reset":                          "resets statistics",
	"pg_stat_reset_shared":                   "resets statistics",
	"pg_stat_reset_single_table_counters":    "resets statistics",
	"pg_stat_reset_single_function_counters": "resets statistics",
	"pg_stat_reset_slru":                     "resets statistics",
	"pg_stat_reset_replication_slot":         "resets statistics",
	"pg_create_physical_replication_slot":    "creates a replication slot (holds WAL, streams data out)",
	"pg_create_logical_replication_slot":     "creates a replication slot (holds WAL, streams data out)",
	"pg_drop_replication_slot":               "drops a replication slot",
	"pg_copy_physical_replication_slot":      "creates a replication slot",
	"pg_copy_logical_replication_slot":       "creates a replication slot",
	"pg_logical_slot_get_changes":            "consumes a replication slot's changes",
	"pg_logical_emit_message":                "writes a WAL message",
	"pg_replication_origin_create":           "creates a replication origin",
	"pg_replication_origin_drop":             "drops a replication origin",
	"pg_import_system_collations":            "creates collations",
	"pg_notify":                              "sends a notification to listeners",
	// Server files and programs.
	"pg_read_file":        "reads a file on the database server",
	"pg_read_binary_file": "reads a file on the database server",
	"pg_ls_dir":           "lists a directory on the database server",
	"pg_stat_file":        "reads file metadata on the database server",
	"pg_file_write":       "writes a file on the database server",
	"pg_file_rename":      "renames a file on the database server",
	"pg_file_unlink":      "deletes a file on the database server",
	"pg_file_sync":        "syncs a file on the database server",
	"lo_import":           "reads a server file into a large object",
	"lo_export":           "writes a large object to a server file",
	// Large objects are data outside any table.
	"lo_unlink":     "deletes a large object",
	"lo_create":     "creates a large object",
	"lo_creat":      "creates a large object",
	"lo_from_bytea": "creates a large object",
	"lo_put":        "writes a large object",
	"lo_truncate":   "truncates a large object",
	"lowrite":       "writes a large object",
	// Sequences change state even inside a SELECT.
	"nextval": "advances a sequence",
	"setval":  "sets a sequence",
	// Locks that outlive the statement.
	"pg_advisory_lock":          "takes a session lock",
	"pg_advisory_lock_shared":   "takes a session lock",
	"pg_try_advisory_lock":      "takes a session lock",
	"pg_advisory_xact_lock":     "takes a transaction lock",
	"pg_try_advisory_xact_lock": "takes a transaction lock",
	// Connections to other servers (dblink, run as the database server).
	"dblink_connect":    "opens a connection from the database server",
	"dblink_connect_u":  "opens a connection from the database server without password checks",
	"dblink":            "runs SQL over a connection from the database server",
	"dblink_exec":       "runs SQL over a connection from the database server",
	"dblink_send_query": "runs SQL over a connection from the database server",
	"dblink_open":       "runs SQL over a connection from the database server",
	"set_config":        "changes a security-relevant setting",
}

// sqlTextFunctions run SQL given to them as text: their constant string
// arguments are classified as nested statements, and a non-constant one is
// dynamic SQL.
var sqlTextFunctions = map[string]bool{
	"dblink": true, "dblink_exec": true, "dblink_send_query": true, "dblink_open": true,
	"query_to_xml": true, "query_to_xmlschema": true, "query_to_xml_and_xmlschema": true,
	"ts_stat": true,
}

// connectionFunctions take a connection string, which may carry a password.
var connectionFunctions = map[string]bool{
	"dblink_connect": true, "dblink_connect_u": true, "dblink": true, "dblink_exec": true,
	"dblink_send_query": true, "dblink_open": true,
}

// securitySettings are configuration parameters whose change weakens a
// control: who the session is, whether it is read-only, what is logged or
// audited, which triggers and row policies apply, what code is loaded.
// search_path is left out on purpose: nearly every client sets it, and it
// matters only with SECURITY DEFINER functions that do not pin their own.
var securitySettings = map[string]string{
	"role":                          "changes the session's effective role",
	"session_authorization":         "changes the session's user",
	"transaction_read_only":         "can leave read-only mode",
	"default_transaction_read_only": "can leave read-only mode",
	"session_replication_role":      "disables triggers and foreign-key checks",
	"row_security":                  "changes row-level security enforcement",
	"track_activities":              "hides the session from pg_stat_activity",
	"local_preload_libraries":       "loads code into later sessions",
	"session_preload_libraries":     "loads code into later sessions",
	"shared_preload_libraries":      "loads code into the server",
	"dynamic_library_path":          "changes where code is loaded from",
	"password_encryption":           "changes how passwords are stored",
	"lo_compat_privileges":          "disables large-object permission checks",
	"allow_system_table_mods":       "allows changes to system catalogs",
	"ignore_system_indexes":         "changes catalog access",
	"zero_damaged_pages":            "destroys data on damaged pages",
}

// securitySetting returns why changing name matters, or "".
func securitySetting(name string) string {
	name = strings.ToLower(name)
	if r, ok := securitySettings[name]; ok {
		return r
	}
	switch {
	case strings.HasPrefix(name, "log_"), strings.HasPrefix(name, "debug_print"):
		return "changes what the server logs"
	case strings.HasPrefix(name, "pgaudit."):
		return "changes what is audited"
	}
	return ""
}

// roleCatalogs are system tables and views holding roles, memberships and
// passwords: writing them (as a superuser can) changes roles.
var roleCatalogs = map[string]bool{
	"pg_authid": true, "pg_auth_members": true, "pg_shadow": true,
	"pg_roles": true, "pg_user": true, "pg_group": true, "pg_db_role_setting": true,
}

// lastName is the unqualified part of a dotted name.
func lastName(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i+1:]
	}
	return name
}
