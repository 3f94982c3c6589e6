"""``methods``, ``toy-clip`` and ``demo``: the method plugins, the toy CLIP teacher and the demo."""
from __future__ import annotations

import json
from pathlib import Path

from zss_bench.cli.common import _one_line


def cmd_methods(args) -> int:
    """Every plugin that imports, with its declarations; one that does not is listed as broken (with
    its error) instead of ending the listing. Exit 0 while at least one method works."""
    from zss_bench.plugins import get_method, list_methods

    rows = []
    for name in list_methods():
        try:
            plugin = get_method(name)
        except Exception as exc:  # noqa: BLE001  (a broken plugin only breaks itself)
            rows.append({"name": name, "error": _one_line(exc)})
            continue
        readme = Path(plugin.config_dir).parent / "README.md"
        rows.append({"name": name, "description": plugin.description, "trains": plugin.trains,
                     "readme": _shown_path(readme) if readme.is_file() else None,
                     "uses_clip": plugin.uses_clip, "text_classifier": plugin.text_classifier,
                     "train_mapper": plugin.train_mapper, "meta_architecture": plugin.meta_architecture})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['name']:<16} BROKEN: {r['error']}")
                continue
            kind = "trains" if r["trains"] else "training-free"
            clip = "CLIP" if r["uses_clip"] else "no CLIP"
            text = f"text classifier: {r['text_classifier']}"
            print(f"{r['name']:<16} {kind:<13} {clip:<7} {text:<35} {r['description']}")
            print(f"{'':<16} README: {r['readme'] or '(none)'}")
    return 0 if any("error" not in r for r in rows) else 1


# --- toy CLIP ------------------------------------------------------------------------------

def _shown_path(path: Path) -> str:
    """Relative to the working folder when inside it (``methods/chimera/README.md`` in a checkout)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def cmd_toy_pretrain(args) -> int:
    from zss_bench.clip.toy import pretrain_toy_clip
    from zss_bench.protocol import load_protocol

    overrides = {"steps": args.steps, "batch_size": args.batch_size,
                 "surface": load_protocol(args.protocol).world["surface"]}
    path, info = pretrain_toy_clip(seed=args.seed, cache=not args.force, progress=not args.json,
                                   **{k: v for k, v in overrides.items() if v is not None})
    from zss_bench.clip.shipped import reference_toy_spec
    from zss_bench.records.paths import portable_path

    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "loss_curve"}, indent=2))
    else:
        from zss_bench.clip.loading import file_sha256

        ev = info.get("eval", {})
        print(f"toy CLIP checkpoint: {path} (weights {file_sha256(path)[:12]}...)\n  trained in "
              f"{info.get('train_time_s', '?')} s, final loss {info.get('final_loss', '?')}; zero-shot accuracy "
              f"overall {ev.get('overall', 'n/a')} / seen {ev.get('seen', 'n/a')} / unseen {ev.get('unseen', 'n/a')} %\n"
              f"  use it with --clip {info['config']['model']}:{path}\n  (this never replaces the shipped reference "
              f"teacher {reference_toy_spec()}; records name the weights hash either way; "
              f"cache path {portable_path(path)})")
    return 0


def cmd_toy_eval(args) -> int:
    from zss_bench.clip import load_clip
    from zss_bench.clip.text_embeddings import TextEncoderAudit
    from zss_bench.clip.toy import evaluate_toy_clip
    from zss_bench.protocol import load_protocol

    clip = load_clip(args.clip or load_protocol(args.protocol).world["teacher"])  # the protocol's shipped teacher
    audit = TextEncoderAudit()
    result = evaluate_toy_clip(clip, protocol_name=args.protocol, n_per_class=args.n_per_class,
                               prompt_kind=args.prompts, audit=audit)
    dense = None
    if args.dense_images:
        from zss_bench.modeling.dense_zero_shot import READOUTS, evaluate_dense_zero_shot

        dense = evaluate_dense_zero_shot(clip, protocol_name=args.protocol, n_images=args.dense_images,
                                         seed=args.world_seed, size=args.size, prompt_kind=args.prompts, audit=audit)
    if args.json:
        print(json.dumps({**result, "dense": dense} if dense else result, indent=2))
        return 0
    print(f"{clip.spec}: zero-shot accuracy on single-object {args.protocol} images ({result['n']} images): "
          f"overall {result['overall']:.1f}%, seen {result['seen']:.1f}%, unseen {result['unseen']:.1f}%")
    if dense:
        print(f"  dense (per patch, {dense['n_images']} val scenes of world seed {dense['world_seed']} at "
              f"{dense['size']} px, {dense['grid'][0]}x{dense['grid'][1]} tokens, {dense['patches']} object "
              f"patches; chance {dense['chance']:.1f}%, in-image by chance {dense['in_image_chance']:.1f}%):")
        names = {"dense": "last-layer tokens", "value": "value readout (MaskCLIP)"}
        for r in READOUTS:
            d = dense[r]
            print(f"    {names[r]:<26} overall {d['overall']:.1f}%, seen {d['seen']:.1f}%, unseen {d['unseen']:.1f}%, "
                  f"mean class {d['mean_class']:.1f}%, in-image {d['in_image']:.1f}%"
                  + (f", colour {d['colour']:.1f}%, shape {d['shape']:.1f}%" if "colour" in d else ""))
    print(f"  weights sha256 {clip.weights_hash}")
    return 0


def cmd_toy_export(args) -> int:
    from zss_bench.clip.export import export_toy_clip

    dense = zero_shot = None
    if args.dense_images:  # measured on the protocol's own world, as `toy-clip eval` does
        from zss_bench.clip import load_clip
        from zss_bench.clip.export import checkpoint_info
        from zss_bench.clip.text_embeddings import TextEncoderAudit
        from zss_bench.clip.toy import evaluate_toy_clip
        from zss_bench.modeling.dense_zero_shot import READOUTS, evaluate_dense_zero_shot

        model = checkpoint_info(Path(args.checkpoint).expanduser())["config"]["model"]
        clip = load_clip(f"{model}:{Path(args.checkpoint).expanduser()}")
        audit = TextEncoderAudit()
        zero_shot = {kind: {k: v for k, v in evaluate_toy_clip(clip, protocol_name=args.protocol, prompt_kind=kind,
                                                               audit=audit).items()
                            if k not in ("per_class", "templates")}
                     for kind in ("single", "ensemble")}
        result = evaluate_dense_zero_shot(clip, protocol_name=args.protocol, n_images=args.dense_images, audit=audit)
        dense = {"protocol": args.protocol, **{k: result[k] for k in ("n_images", "world_seed", "size", "grid",
                                                                      "patches", "chance")},
                 **{r: result[r] for r in READOUTS}}
    entry = export_toy_clip(args.checkpoint, args.tag, args.description, dense=dense, zero_shot=zero_shot)
    print(f"shipped {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}...) as tag "
          f"{args.tag}; load it with --clip {entry['recipe']['config']['model']}:{args.tag}")
    return 0


def cmd_demo(args) -> int:
    from zss_bench.demo import run_demo

    return run_demo(Path(args.out))




def add_toy_clip(sub) -> None:
    """The ``toy-clip`` verb."""
    p = sub.add_parser("toy-clip", help="the tiny CLIP learned offline on the synthetic world")
    toy = p.add_subparsers(dest="toy_command", required=True, metavar="SUBCOMMAND")
    t = toy.add_parser("pretrain", help="train (or reuse from the cache) the toy CLIP")
    t.add_argument("--world", choices=["synth"], default="synth", help="caption world (only synth exists)")
    t.add_argument("--steps", type=int, help="training steps (default: the toy CLIP config's)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--protocol", default="synth-15-5", help="synthetic protocol whose world (its object surfaces) "
                   "the captions come from (default: synth-15-5, i.e. v1; synth-15-5@2: textured)")
    t.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint matches")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_toy_pretrain)
    t = toy.add_parser("eval", help="zero-shot classification of single-object synthetic images")
    t.add_argument("--clip", help="CLIP spec (default: the protocol's shipped teacher, world.teacher: "
                   "zss-toy-vit:synth-v1 for synth-15-5)")
    t.add_argument("--protocol", default="synth-15-5")
    t.add_argument("--n-per-class", type=int, default=50)
    t.add_argument("--prompts", choices=["single", "ensemble"], help="prompt kind (default: the protocol's)")
    t.add_argument("--dense-images", type=int, default=200, metavar="N",
                   help="also classify every object patch of N validation scenes against the class prompts, from "
                        "the last-layer tokens and from MaskCLIP's value readout (default: 200; 0: skip)")
    t.add_argument("--world-seed", type=int, default=7, help="world whose validation scenes are used (default: 7, "
                   "the dev world)")
    t.add_argument("--size", type=int, help="scene size in px (default: the CLIP's own input size)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_toy_eval)
    t = toy.add_parser("export", help="ship a pretrained checkpoint as a new tag (weights file + tags.json entry)")
    t.add_argument("checkpoint", help="checkpoint.pt written by `toy-clip pretrain` (its info.json beside it)")
    t.add_argument("--tag", required=True, help="new tag, e.g. synth-v2 (an existing tag is never rebound)")
    t.add_argument("--description", required=True, help="what the teacher is and which protocol uses it")
    t.add_argument("--protocol", default="synth-15-5", help="protocol whose world the dense accuracy is measured on")
    t.add_argument("--dense-images", type=int, default=200, metavar="N",
                   help="record dense zero-shot accuracy on N dev-world validation scenes (default 200; 0: skip)")
    t.set_defaults(func=cmd_toy_export)


def add_methods_demo(sub) -> None:
    """The ``methods`` and ``demo`` verbs."""
    p = sub.add_parser("methods", help="list the method plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="the end-to-end job on the embedded synthetic protocol")
    p.add_argument("--out", default="build/demo", help="scratch folder for the demo (default: build/demo)")
    p.set_defaults(func=cmd_demo)
