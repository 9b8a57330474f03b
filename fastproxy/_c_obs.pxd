# Mirrors src_c/fp_obs.h: access-log records, cluster counters, audit and log settings of a table.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

from fastproxy._c_engine cimport fp_engine, fp_table

cdef extern from "fp_obs.h" nogil:
    enum:
        FP_OBS_HOST_MAX
        FP_OBS_PATH_MAX
        FP_CLUSTER_NAME_MAX
        FP_OBS_REASONS
        FP_OBS_CODE_SLOTS

    struct fp_obs_rec:
        uint64_t start_ns
        uint64_t dur_us
        uint64_t bytes_c2u
        uint64_t bytes_u2c
        uint64_t table_id
        int32_t rule
        uint16_t src_port
        uint16_t dst_port
        uint16_t status
        uint8_t family
        uint8_t kind
        uint8_t action
        uint8_t reason
        uint8_t would_deny
        uint8_t end
        uint8_t method
        uint8_t tls
        uint8_t src[16]
        uint8_t dst[16]
        char host[128]
        char path[128]

    struct fp_obs_counters:
        uint64_t decided_mesh
        uint64_t decided_allow
        uint64_t decided_passthrough
        uint64_t denied[16]
        uint64_t would_deny[16]
        uint64_t log_records
        uint64_t log_dropped
        uint64_t clusters_overflow
        uint64_t http_codes[600]

    struct fp_cluster_snap:
        char name[112]
        uint64_t cx_active
        uint64_t cx_total
        uint64_t tx_bytes
        uint64_t rx_bytes
        uint64_t rq_completed
        uint64_t rq_class[6]
        uint16_t codes[6]
        uint64_t code_count[6]

    enum:
        FP_OBS_ACTIONS
        FP_OBS_ENDS
        FP_OBS_METHODS

    struct fp_obs_names:
        const char *action[8]
        const char *reason[16]
        const char *end[16]
        const char *method[16]

    ssize_t fp_obs_format(const fp_obs_rec *r, const fp_obs_names *nm, const char *by,
                          char *out, size_t cap)

    int fp_obs_setup(fp_engine *e, int ring_cap, int cluster_cap)
    int fp_obs_drain(fp_engine *e, fp_obs_rec *out, int max)
    int fp_obs_read_counters(fp_engine *e, fp_obs_counters *out)
    int fp_obs_clusters(fp_engine *e, fp_cluster_snap *out, int max)
    int fp_table_set_obs(fp_table *t, uint64_t id, int log, uint32_t passthrough_ppm, int audit)
    uint64_t fp_table_rule_hits(const fp_table *t, int rule)
    int fp_table_refs(const fp_table *t)
