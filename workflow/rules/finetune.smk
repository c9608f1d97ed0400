# Stage: finetune. Rules call `emtrait` commands; paths come from common.smk.
