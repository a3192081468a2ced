"""List import cycles between mlopsnb modules (module-level and function-level imports), from the source alone.

Usage: .venv/bin/python bench/import_cycles.py [mlopsnb]   (issue 18: "no import circles")."""
import ast, sys
from pathlib import Path

pkg = Path(sys.argv[1] if len(sys.argv) > 1 else "mlopsnb")

def modname(f: Path) -> str:
    parts = f.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

mods = {modname(f): f for f in pkg.rglob("*.py") if f.name != "_modidx.py"}

def imports(name: str, f: Path):
    "Yield (imported module, level): level 'module' or 'function'."
    tree = ast.parse(f.read_text())
    ispkg = f.name == "__init__.py"
    def walk(node, depth):
        for ch in ast.iter_child_nodes(node):
            d = depth + isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(ch, ast.Import):
                for a in ch.names: yield a.name, d
            elif isinstance(ch, ast.ImportFrom):
                base = ch.module or ""
                if ch.level:
                    parts = name.split(".") if ispkg else name.split(".")[:-1]
                    parts = parts[:len(parts) - ch.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                yield base, d
                for a in ch.names: yield f"{base}.{a.name}", d
            yield from walk(ch, d)
    for target, d in walk(tree, 0):
        while target and target not in mods: target = target.rpartition(".")[0]
        if target and target != name: yield target, "function" if d else "module"

edges = {}
for n, f in mods.items():
    for t, lvl in imports(n, f):
        if edges.get((n, t)) != "module": edges[(n, t)] = lvl   # a module-level import of the pair wins

graph = {}
for (a, b) in edges: graph.setdefault(a, set()).add(b)

# strongly connected components (Tarjan)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in list(mods): 
    if v not in index: strong(v)
n_func = sum(1 for v in edges.values() if v == "function")
print(f"{len(mods)} modules, {len(edges)} import edges ({n_func} only inside functions)")
if not sccs: print("no import cycles")
for comp in sccs:
    print("cycle among:", ", ".join(comp))
    for a in comp:
        for b in sorted(graph.get(a, ())):
            if b in comp: print(f"   {a} -> {b} ({edges[(a, b)]})")
