# Stage: prepare. Rules call `emtrait` commands; paths come from common.smk.
