# Stage: analysis. Rules call `emtrait` commands; paths come from common.smk.
