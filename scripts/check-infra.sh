#!/usr/bin/env bash
# Offline checks of the infrastructure code (terraform/, deploy/, the CI
# pipeline), run by ./scripts/test.sh before the cargo tests. Nothing here
# reaches a cloud or a registry: Terraform providers cannot be downloaded on
# this machine, so `terraform validate`/`plan` are not run (README, "Deploy").
#
#   checkov              terraform/, the rendered Kubernetes manifests of
#                        base, dev and prod, deploy/Dockerfile and
#                        .github/workflows: no failed check (every skip is
#                        written next to its resource with its reason)
#   kubernetes-validate  the rendered manifests against Kubernetes 1.33's
#                        schemas, strict (unknown fields are errors)
#   yamllint             every YAML file of deploy/ and .github/
#   promtool             the alert rules (check) and their unit tests (test)
#   amtool               the Alertmanager routing
#   terraform fmt        where a terraform binary exists
#
# The Python tools live in a virtualenv of their own under
# ~/.cache/tributary/infra-venv (installed by scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$HOME/.cache/tributary/infra-venv"
export PATH="$venv/bin:$PATH"
# checkov: no calls home for guidelines or policies.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

passed=0
failed=0
step() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "  ok      $name"
  else
    failed=$((failed + 1))
    echo "  FAILED  $name"
    echo "$out" | tail -n 40 | sed 's/^/          /'
  fi
}

echo "== offline checks of terraform/, deploy/ and the pipeline"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
mkdir "$rendered/k8s"
for overlay in base overlays/dev overlays/prod; do
  name=${overlay##*/}
  step "kustomize $overlay" sh -c "kubectl kustomize deploy/k8s/$overlay > '$rendered/k8s/$name.yaml'"
done

checkov_quiet() {
  # One line per failed check; exit status 1 on any failure.
  checkov --skip-download --compact --quiet "$@"
}

step "kubernetes-validate --strict (1.33)" \
  kubernetes-validate --strict --quiet -k 1.33.0 "$rendered"/k8s/base.yaml "$rendered"/k8s/dev.yaml "$rendered"/k8s/prod.yaml
step "checkov terraform" checkov_quiet -d terraform --framework terraform
# The overlays are what gets applied (base alone has no image digest).
step "checkov kubernetes (dev, prod)" \
  checkov_quiet -f "$rendered"/k8s/dev.yaml -f "$rendered"/k8s/prod.yaml --framework kubernetes
step "checkov dockerfile" checkov_quiet -f deploy/Dockerfile --framework dockerfile
step "checkov github_actions" checkov_quiet -d . --framework github_actions
step "yamllint" yamllint --strict -c .yamllint.yml deploy .github
step "promtool check rules" promtool check rules deploy/prometheus/rules/tributary.yml
step "promtool test rules" promtool test rules deploy/prometheus/tests/tributary.test.yml
step "amtool check-config" amtool check-config deploy/prometheus/alertmanager.yml
if command -v terraform >/dev/null 2>&1; then
  step "terraform fmt -check" terraform fmt -check -recursive terraform
  # `validate` needs the AWS provider's schema. Registries other than
  # crates.io, PyPI, Debian and npm are out of reach here, so it runs only
  # where a local provider mirror holds hashicorp/aws (some machines have
  # one under /opt/tf-plugins; TRIBUTARY_TF_MIRROR names another), on a
  # copy of terraform/ so no lock file or .terraform folder is left behind.
  mirror=${TRIBUTARY_TF_MIRROR:-/opt/tf-plugins}
  if [ -d "$mirror/registry.terraform.io/hashicorp/aws" ]; then
    cp -r terraform "$rendered/tf"
    cat > "$rendered/terraformrc" <<RC
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/*/*"]
  }
  direct {
    exclude = ["registry.terraform.io/*/*"]
  }
}
RC
    for env in dev prod; do
      step "terraform validate envs/$env (provider mirror $mirror)" sh -c "
        cd '$rendered/tf/envs/$env' &&
        export TF_CLI_CONFIG_FILE='$rendered/terraformrc' TF_IN_AUTOMATION=1 &&
        terraform init -backend=false -input=false -no-color >/dev/null &&
        terraform validate -no-color"
    done
  else
    echo "  skip    terraform validate (no provider mirror at $mirror; providers cannot be downloaded here)"
  fi
else
  echo "  skip    terraform fmt -check and validate (no terraform binary on this machine)"
fi
echo "infra checks: $passed ok, $failed failed"
((failed == 0))
