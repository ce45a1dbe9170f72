.PHONY: check serve
check:
	bash scripts/test.sh
serve:
	bash scripts/serve.sh
